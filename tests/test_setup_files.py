"""The set-up files agree: environment.yml lists requirements.txt's
packages, and the README opens with the two commands .ci/run executes."""
import os
import re

from conftest import ROOT


def _read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_environment_yml_has_the_requirements():
    # The pip entries are the lines indented under "- pip:" (no YAML library needed).
    text = _read("environment.yml")
    assert re.search(r"^name: \S+$", text, re.M) and "dependencies:" in text
    pip_section = re.findall(r"^ {6}- (.+)$", text, re.M)
    requirements = [line.strip() for line in _read("requirements.txt").splitlines()
                    if line.strip() and not line.startswith("#")]
    assert sorted(pip_section) == sorted(requirements)


def test_readme_opens_with_the_two_commands():
    readme = _read("README.md")
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert "pip install -r requirements.txt" in first_block[0] and "python main_imp.py" in first_block[0]
    assert "pip install -r requirements.txt" in first_block[1] and "pytest" in first_block[1]
