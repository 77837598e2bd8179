"""The layers, the components' declarations, and the configs that ship in the wheel."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import attacks
import strategies
from fl_shadow.defenses import DEFENSES, Defense
from fl_shadow.defenses.base import load_pretrained_generator

ROOT = Path(__file__).resolve().parents[1]

# Who may import whom. The core imports no upper layer; the middle layer's three packages
# import the core only (the server side does not import client code, nor the attacks' code:
# the attack arrives built); the apps import everything.
CORE, APPS = "fl_shadow", "fl_shadow.apps"
MIDDLE = ("attacks", "clients", "strategies")
ALLOWED = {CORE: {CORE}, "attacks": {CORE, "attacks"}, "clients": {CORE, "clients"},
           "strategies": {CORE, "strategies"}, APPS: {CORE, APPS, *MIDDLE}}


def layer_of(module: str) -> str | None:
    if module == APPS or module.startswith(APPS + "."):
        return APPS
    for name in (CORE, *MIDDLE):
        if module == name or module.startswith(name + "."):
            return name
    return None


def project_imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, imported module, at module level)`` for every project import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    # Imports for type checkers only (``if TYPE_CHECKING:``) do not run: count them as top.
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top_level |= {id(child) for child in node.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if layer_of(name) is not None:
                found.append((node.lineno, name, id(node) in top_level))
    return found


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upward_imports(root: Path = ROOT) -> list[str]:
    """Every import that crosses the layers the wrong way, as ``file:line -> module``."""
    bad = []
    for package in (CORE, *MIDDLE):
        for path in sorted((root / package).rglob("*.py")):
            src = layer_of(module_name(path, root))
            assert src is not None
            for line, target, _ in project_imports(path):
                dst = layer_of(target)
                if dst not in ALLOWED[src]:
                    bad.append(f"{path.relative_to(root)}:{line} -> {target}")
    return bad


def test_no_layer_imports_upward() -> None:
    assert upward_imports() == []


def test_the_import_check_catches_an_upward_import(tmp_path: Path) -> None:
    for package in (CORE, *MIDDLE):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
    (tmp_path / "fl_shadow" / "scoring.py").write_text("from attacks.base import Prior\n")
    (tmp_path / "strategies" / "hook.py").write_text(
        "def f():\n    from clients.defended import LocalData\n")
    assert upward_imports(tmp_path) == ["fl_shadow/scoring.py:1 -> attacks.base",
                                        "strategies/hook.py:2 -> clients.defended"]


def test_imports_live_at_module_level() -> None:
    """The layers hold without function-level imports to dodge cycles; the few left are
    optional heavy packages, not project modules."""
    inner = []
    for package in (CORE, *MIDDLE):
        for path in sorted((ROOT / package).rglob("*.py")):
            inner += [f"{path.relative_to(ROOT)}:{line} -> {name}"
                      for line, name, top in project_imports(path) if not top]
    assert inner == []



# Loaded only where they are used (saliency maps, SSIM, LPIPS, ResNet-18, intervals, plots):
# each Flower process (the ServerApp, every simulated client's actor, a SuperNode's app)
# imports the apps at start-up, and these cost ~3 s and ~250 MB there. (scipy.optimize stays:
# the one federation builder loads the attacks, and GradInversion matches images with it.)
DEFERRED = ("pytorch_grad_cam", "torchvision", "piq", "sklearn", "cv2", "matplotlib",
            "scipy.stats", "scipy.optimize")


@pytest.mark.parametrize("module", ["fl_shadow.apps.client_app", "fl_shadow.apps.server_app"])
def test_the_flower_apps_start_without_the_heavy_optional_imports(module: str) -> None:
    code = (f"import sys, {module}\n"
            f"print(' '.join(m for m in {DEFERRED!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT).stdout.split()
    assert loaded == []

# ---- components declared once ----------------------------------------------------------------
def test_defense_specs_say_what_the_classes_do() -> None:
    for name in DEFENSES:
        spec = DEFENSES.get(name)
        keeps = spec.factory.state_dict is not Defense.state_dict
        assert spec.keeps_client_state == keeps, name
        takes_generator = "load_generator" in inspect.signature(spec.factory).parameters
        assert spec.needs_generator == takes_generator, name
        private = spec.factory.wrap_model is not Defense.wrap_model
        assert spec.private_model == private, name
        assert spec.factory.name == name
        spec.parse_params({})  # every defense has valid defaults
    modelled = {n for n in DEFENSES if DEFENSES.get(n).attacker_model is not None}
    assert modelled == {"none", "clipping", "dp", "sparsification", "soteria", "outpost",
                        "shadow", "input_noise"}
    assert load_pretrained_generator.__module__ == "fl_shadow.defenses.base"


def test_attack_specs_declare_needs_and_ceilings() -> None:
    for name in attacks.ATTACKS:
        spec = attacks.ATTACKS.get(name)
        params = spec.parse_params({})
        needs = spec.needs(params)
        assert spec.factory.name == name
        assert (needs.generator is not None) == (name in ("ggl", "gias")), name
        assert spec.max_images >= 1
        assert spec.reconstructs == (name != "none")
    gi = attacks.ATTACKS.get("gradinversion")
    assert gi.needs(gi.parse_params({"bn_weight": 0})).bn_statistics is None
    assert gi.needs(gi.parse_params({})).bn_statistics is not None


def test_every_flower_strategy_is_registered_with_its_state() -> None:
    names = set(strategies.STRATEGIES)
    assert names >= {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm",
                     "fedmedian", "krum"}
    assert strategies.STRATEGIES.get("fedadam").server_state == ("m_t", "v_t")
    prox = strategies.STRATEGIES.get("fedprox")
    assert prox.proximal_mu(prox.parse_params({"proximal_mu": 0.3})) == 0.3
    assert strategies.STRATEGIES.get("fedavg").proximal_mu(None) == 0.0


# ---- the configs ship in the package ----------------------------------------------------------
def test_a_wheel_install_shows_the_default_config(tmp_path: Path) -> None:
    """Build the wheel, install it alone into a fresh venv (its dependencies come from this
    environment's site-packages, read-only), and run ``fl-shadow show-config`` from an
    unrelated folder."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(ROOT)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = dist.glob("fl_shadow-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.check_output(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
         "['purelib'])"], text=True).strip())
    # This environment's packages, but not its editable install of the project.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import fl_shadow; print(fl_shadow.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site)), where.stdout
    proc = subprocess.run([str(venv / "bin" / "fl-shadow"), "show-config"], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "name: default" in proc.stdout and "dataset: mni152" in proc.stdout
    shadow = subprocess.run([str(venv / "bin" / "fl-shadow"), "show-config", "shadow"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert shadow.returncode == 0 and "name: shadow" in shadow.stdout, shadow.stderr


@pytest.mark.parametrize("name", ["default", "shadow", "anatomy_noise", "flower_dp",
                                  "paper_scale", "paper_scale_shadow"])
def test_shipped_configs_pass_every_load_time_check(name: str) -> None:
    from fl_shadow.apps.experiment import check_experiment
    from fl_shadow.config import load_config

    config = load_config(name)
    if config.simulation.num_gpus_per_client > 0:  # paper scale: a GPU machine's config
        config = load_config(name, ["simulation.num_gpus_per_client=0",
                                    "simulation.num_cpus_per_client=1"])
    check_experiment(config, data=config.data.image_size <= 64)
