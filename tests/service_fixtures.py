"""A small answers directory and an app over it, for the service tests."""
from __future__ import annotations

from helpers import answer_text

PLOT = '''import numpy as np
import matplotlib.pyplot as plt
z = np.linspace(-6, 6, 241)
s = 1 / (1 + np.exp(-z))
fig, ax = plt.subplots(figsize=(4, 3))
ax.plot(z, s * (1 - s))
ax.set_title("The sigmoid's derivative peaks at 1/4")
print("max:", (s * (1 - s)).max())
check("σ'(z) never exceeds 1/4", (s * (1 - s)).max() <= 0.25 + 1e-12, (s * (1 - s)).max())'''

SMALL_ANSWERS = {
    "sigmoid-slope": answer_text(
        title="Why is the slope of the sigmoid at most 1/4?",
        summary="Because $\\sigma'(z) = \\sigma(z)(1 - \\sigma(z))$ and $p(1-p)$ peaks at $p = 1/2$.",
        extra="aliases: [\"What is the maximum of the sigmoid derivative?\"]\ntags: [activation-functions, calculus]\n"
              "related: [averaging]\nsources: [\"A lecture\"]\n",
        prose="## Reasoning\n\nThe product $p(1-p)$ is largest at $p = 1/2$.", snippets=[PLOT]),
    "averaging": answer_text(
        title="Why do we average the gradient over the m examples?",
        summary="The cost is an average, so its gradient is the average of the per-example gradients.",
        extra="tags: [gradient-descent]\nrelated: [sigmoid-slope]\n",
        snippets=['import numpy as np\ng = np.arange(4.0)\ncheck("the mean of the gradients is their sum over m", '
                  'np.isclose(g.mean(), g.sum() / 4), g.mean())']),
    "wrong-claim": answer_text(
        title="Is the sigmoid's slope ever above 1/2?", summary="No; this answer claims the opposite on purpose.",
        extra="tags: [calculus]\n",
        snippets=['import numpy as np\ncheck("the slope exceeds 1/2", 0.25 > 0.5, 0.25)']),
}


def write_small_answers(folder):
    folder.mkdir(exist_ok=True)
    for slug, text in SMALL_ANSWERS.items():
        (folder / f"{slug}.md").write_text(text)
    return folder
