"""The static export follows the topic structure: the grouped index and a page per topic, linked relatively."""
import re

from helpers import answer_text, run_cli

from kb.format.topics import TOPICS


def test_export_writes_topic_pages_linked_from_the_grouped_index(tmp_path):
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "shallow.md").write_text(answer_text(
        title="What is a shallow network?", summary="One hidden layer, $g'(z)$ and all.",
        extra="topic: shallow-networks\n", snippets=['check("one is one", 1 == 1, 1)']))
    site = tmp_path / "site"
    built = run_cli("build", site, "--answers", answers, "--db", tmp_path / "db", cwd=tmp_path, timeout=300)
    assert built.returncode == 0, built.stderr
    assert {p.name for p in (site / "topics").iterdir()} == {f"{t.key}.html" for t in TOPICS}
    index = (site / "index.html").read_text()
    assert 'href="topics/shallow-networks.html"' in index and 'href="answers/shallow.html"' in index
    topic = (site / "topics/shallow-networks.html").read_text()
    assert 'href="../answers/shallow.html"' in topic and "One hidden layer" in topic
    assert not re.search(r'(href|src|action)="/', topic), "every link is relative"
    answer = (site / "answers/shallow.html").read_text()
    assert 'href="../topics/shallow-networks.html"' in answer
    assert (site / "static/fonts/NotoSansMath-Regular.woff2").stat().st_size > 100_000
    assert re.search(r"url\(fonts/NotoSansMath-Regular\.woff2\?v=[0-9a-f]{12}\)", (site / "static/style.css").read_text())
