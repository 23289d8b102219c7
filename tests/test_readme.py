"""The README's usage example runs as written."""

import pathlib
import re


def test_readme_usage_example_runs():
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["tok"].shape == (4,) and scope["best"].shape == (4,)
    assert scope["head"].codebook.grad is not None
