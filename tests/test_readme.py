"""The README's examples run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(marker: str) -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if marker in b]


def test_the_user_defined_model_example_transfers(capsys):
    (block,) = _blocks("class Net(nn.Module)")
    exec(compile(block, "README.md", "exec"), {})
    accuracies = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(accuracies) == 6 and accuracies[-1] > 80 > accuracies[0]   # theta2^0 is chance, theta2^5 learnt


def test_the_library_example_recovers_its_permutation():
    (block,) = _blocks("pi_hat = ltray.weight_matching")
    scope: dict = {}
    exec(compile(block.replace("width=4096", "width=256"), "README.md", "exec"), scope)
    import torch

    assert all(torch.equal(scope["pi_hat"][g], scope["pi"][g]) for g in scope["pi"])
    assert all(torch.equal(scope["back"][k], v) for k, v in scope["model"].state_dict().items())
