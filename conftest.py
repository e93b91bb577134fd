pytest_plugins = ["kb.pytest_plugin"]
