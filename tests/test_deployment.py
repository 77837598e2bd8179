"""Deployment engine on loopback: a SuperLink and hospital SuperNodes started by the test.

What is checked, with real ``flower-superlink`` / ``flower-supernode`` / ``flwr`` processes:

* two hospitals, each with its own generated image folder (``--node-config data-path=...
  client-id=...``), run with a defense on, once insecure (3 rounds) and once with TLS +
  SuperNode authentication (2 rounds); each hospital trains on its folder's whole training
  split and sends no audit record, so the curious server attacks but cannot score;
* with authentication on, a node with an unregistered key, a node without a key, and a node
  that does not trust the SuperLink's CA are all refused;
* faults: a SuperNode stopped in the middle of round 2 (SIGTERM) fails that round for its
  hospital only, the failure is recorded, and the SuperNode, started again, trains in round 3;
  a SuperNode killed outright (SIGKILL, ``slow``) is given up after missed heartbeats;
* the simulation engine attached to a Ray cluster started beforehand (``ray start --head``);
* the credential scripts in ``deploy/`` (CA, server certificate, SuperNode keys).

Every process gets its own ``FLWR_HOME`` and free ports, and every process a test starts (with
its children) is ended at teardown, also when the test fails. Ray runs in its own temp dir,
so no other Ray user on the machine can attach to it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from fl_shadow.report import read_jsonl
from processes import free_port, process_tree, processes_mentioning, signal_all

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLASSES = ("bright", "dark")
# Per-class image counts of the hospitals' folders (flat layout). The imagefolder loader keeps,
# per class, round(10%) public (at most n-2), then max(round(20%) of the rest, 1) test: so
# 6 -> 1 public + 1 test + 4 train and 4 -> 0 + 1 + 3, i.e. 8 and 6 training images.
HOSPITAL_IMAGES = {0: 6, 1: 4}
HOSPITAL_TRAIN = {0: 8, 1: 6}


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_certs = _load_script("make_certs")
make_node_keys = _load_script("make_node_keys")


# -- helpers -----------------------------------------------------------------------------------


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def write_image_folder(root: Path, per_class: int, *, seed: int, size: int = 12) -> Path:
    """``root/<class>/*.png``: bright and dark noisy grayscale squares."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            level = 190 if c == 0 else 60
            pixels = np.clip(rng.normal(level, 30, size=(size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / name / f"{i:02d}.png")
    return root


def write_experiment(tmp: Path, *, rounds: int = 2, min_available: int = 2,
                     min_fit: int = 2, attack: bool = True) -> Path:
    """The coordinator's experiment: its own folder is the central test set."""
    coordinator = write_image_folder(tmp / "coordinator-data", 4, seed=99)
    attack_yaml = ("attack: {name: inverting_gradients, rounds: [1], clients: [0], "
                   "labels: recover, params: {iterations: 5, progress: false}}"
                   if attack else "attack: {name: none}")
    text = f"""\
name: deploy-test
seed: 1
data: {{dataset: imagefolder, path: {json.dumps(str(coordinator))}, image_size: 8,
        channels: 1, cache_dir: {json.dumps(str(tmp / "cache"))}}}
partition: {{num_clients: 2, batch_sizes: [4]}}
model: {{name: convnet, width: 4}}
train: {{rounds: {rounds}, lr: 0.05, device: cpu}}
strategy: {{min_fit_clients: {min_fit}, min_available_clients: {min_available}}}
defense: {{name: clipping, params: {{max_norm: 0.001}}}}
{attack_yaml}
"""
    path = tmp / "experiment.yaml"
    path.write_text(text)
    return path


def write_run_config(tmp: Path, experiment: Path, run_dir: Path) -> Path:
    path = tmp / "run_config.toml"
    path.write_text(f"config = {json.dumps(str(experiment))}\noverrides = \"\"\n"
                    f"run-dir = {json.dumps(str(run_dir))}\n")
    return path


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Processes:
    """Starts the processes of one test, logs each to a file, and ends them all at teardown.

    ``markers`` are strings (a test's ports, its Ray temp dir) that only this test's processes
    carry on their command line; teardown also ends those, in case a child was re-parented.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.markers: list[str] = []

    def env(self, name: str, **extra: str) -> dict[str, str]:
        return {**os.environ, "FLWR_HOME": str(self.tmp / "flwr-home" / name),
                "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DEDUP_LOGS": "0",
                "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), **extra}

    def start(self, name: str, argv: list[object], *, home: str | None = None,
              cwd: Path = ROOT, **extra_env: str) -> subprocess.Popen:
        """Start ``argv`` in its own session, output to ``logs/<name>.log``; ``home``: whose
        ``FLWR_HOME`` it uses (default: its own)."""
        assert name not in self.procs, name
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([str(a) for a in argv], cwd=cwd,
                                    env=self.env(home or name, **extra_env), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {n} ---\n{self.log(n)[-chars:]}" for n in self.procs)

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.tails()}")

    def wait_exit(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running after {timeout:.0f}s\n"
                                 f"{self.log(name)[-3000:]}") from None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and all its descendants at once (a machine that goes away)."""
        proc = self.procs[name]
        if proc.poll() is None:  # not reaped yet, so its pid cannot belong to anyone else
            signal_all(process_tree(proc.pid), sig)
        proc.wait(30)

    def close(self) -> None:
        """End every process started here, their descendants and any process carrying one of
        the markers; idempotent."""
        pids: list[int] = []
        for proc in self.procs.values():
            if proc.poll() is None:
                pids += process_tree(proc.pid)
        for marker in self.markers:
            pids += processes_mentioning(marker)
        pids = list(dict.fromkeys(pids))
        signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        signal_all([p for p in pids if alive(p)], signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.markers.clear()


@pytest.fixture()
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.close()


def start_superlink(procs: Processes, *, certs: dict[str, Path] | None = None,
                    node_auth: bool = False, simulation: bool = False, name: str = "superlink",
                    cwd: Path = ROOT, **extra_env: str) -> int:
    port = free_port()
    procs.markers.append(f"127.0.0.1:{port}")
    argv = [BIN / "flower-superlink", "--host", "127.0.0.1", "--port", str(port)]
    if certs is None:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", certs["ca_cert"], "--ssl-certfile", certs["server_cert"],
                 "--ssl-keyfile", certs["server_key"]]
    if node_auth:
        argv.append("--enable-supernode-auth")
    if simulation:
        argv.append("--simulation")
    proc = procs.start(name, argv, cwd=cwd, **extra_env)
    procs.wait(f"{name} on port {port}", lambda: port_open(port) or proc.poll() is not None, 60)
    assert proc.poll() is None, procs.log(name)
    return port


def start_supernode(procs: Processes, name: str, link_port: int, data: Path, client_id: int, *,
                    ca: Path | None = None, key: Path | None = None) -> subprocess.Popen:
    port = free_port()
    procs.markers.append(f"127.0.0.1:{port}")
    argv = [BIN / "flower-supernode", "--superlink", f"127.0.0.1:{link_port}",
            "--host", "127.0.0.1", "--port", str(port),
            "--node-config", f'data-path="{data}" client-id={client_id}']
    argv += ["--insecure"] if ca is None else ["--root-certificates", ca]
    if key is not None:
        argv += ["--auth-supernode-private-key", key]
    return procs.start(name, argv)


def write_connection(procs: Processes, link_port: int, *, ca: Path | None = None) -> str:
    """The operator's Flower config (``$FLWR_HOME/config.toml``) with one SuperLink connection."""
    home = procs.tmp / "flwr-home" / "operator"
    home.mkdir(parents=True, exist_ok=True)
    security = "insecure = true" if ca is None else f"root-certificates = {json.dumps(str(ca))}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "hospitals"\n\n[superlink.hospitals]\n'
        f'address = "127.0.0.1:{link_port}"\n{security}\n')
    return "hospitals"


def operator(procs: Processes, *args: str | Path, timeout: float = 120
             ) -> subprocess.CompletedProcess:
    """A ``flwr`` command run by the coordinator's operator."""
    return subprocess.run([str(BIN / "flwr"), *map(str, args)], cwd=ROOT,
                          env=procs.env("operator"), capture_output=True, text=True,
                          timeout=timeout, check=False)


def activations(procs: Processes, superlink: str = "superlink") -> int:
    return procs.log(superlink).count("[Fleet.ActivateNode] Activated node_id")


def run_state(run_dir: Path) -> str:
    status = run_dir / "status.json"
    return json.loads(status.read_text())["state"] if status.exists() else "missing"


def start_run(procs: Processes, connection: str, tmp: Path, experiment: Path, run_dir: Path,
              *extra: str) -> None:
    """``flwr run <app> <connection> --stream`` by the operator (whose FLWR_HOME holds the
    connection); the run's outcome is read from its ``status.json``, because ``flwr run``
    exits 0 even when the ServerApp fails."""
    run_config = write_run_config(tmp, experiment, run_dir)
    procs.start("flwr-run", [BIN / "flwr", "run", ROOT, connection, "--run-config", run_config,
                             "--stream", *extra], home="operator")


def wait_for_run(procs: Processes, run_dir: Path, timeout: float = 240) -> None:
    procs.wait(f"the run in {run_dir}", lambda: run_state(run_dir) in ("completed", "failed"),
               timeout)
    assert run_state(run_dir) == "completed", (run_dir / "status.json").read_text() + procs.tails()


def fit_rows(run_dir: Path) -> list[tuple[int, int]]:
    return sorted((r["round"], r["client"]) for r in read_jsonl(run_dir / "fit.jsonl"))


def assert_attacked_but_not_scored(run_dir: Path) -> None:
    """The curious server attacked hospital 0's round-1 update, but deployment sends no audit
    record, so the reconstruction was saved without scores (no PSNR/SSIM/LPIPS)."""
    privacy = read_jsonl(run_dir / "privacy.jsonl")
    assert [(r["round"], r["client"], r["iterations"]) for r in privacy] == [(1, 0, 5)]
    assert not {"psnr", "ssim", "lpips", "label_accuracy"} & set(privacy[0])
    assert (run_dir / "grids" / "round001_client00.png").exists()


@pytest.fixture()
def hospitals(tmp_path: Path) -> dict[int, Path]:
    return {cid: write_image_folder(tmp_path / f"hospital-{cid}", n, seed=cid)
            for cid, n in HOSPITAL_IMAGES.items()}


# -- credential scripts (no Flower process) ----------------------------------------------------

def test_make_certs_issues_a_server_certificate_the_ca_verifies(tmp_path: Path) -> None:
    from cryptography import x509

    paths = make_certs.write_certificates(tmp_path / "c", ["coord.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    server = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5", "127.0.0.1",
                                                                         "::1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca_key", "server_key"):
        assert paths[key].stat().st_mode & 0o777 == 0o600
    assert "reused_ca" not in paths

    # A second call (new address) keeps the CA, so the hospitals' trust stays valid.
    ca_bytes = paths["ca_cert"].read_bytes()
    again = make_certs.write_certificates(tmp_path / "c", ["coord2.example.org"])
    assert again["ca_cert"].read_bytes() == ca_bytes and "reused_ca" in again
    x509.load_pem_x509_certificate(again["server_cert"].read_bytes()).verify_directly_issued_by(ca)

    with pytest.raises(ValueError, match="without port or scheme"):
        make_certs.write_certificates(tmp_path / "d", ["coord.example.org:9092"])
    assert not (tmp_path / "d" / "ca.crt").exists()  # nothing written for a bad host
    (tmp_path / "c" / "ca.key").unlink()
    with pytest.raises(ValueError, match="only one of ca.crt and ca.key"):
        make_certs.write_certificates(tmp_path / "c", ["coord.example.org"])


def test_server_certificate_passes_a_tls_handshake_only_for_its_names(tmp_path: Path) -> None:
    paths = make_certs.write_certificates(tmp_path / "c", ["coord.example.org"])
    other_ca = make_certs.write_certificates(tmp_path / "other", ["coord.example.org"])["ca_cert"]
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(paths["server_cert"], paths["server_key"])
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(4):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def handshake(ca: Path, name: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(ca))
        if hasattr(ssl, "VERIFY_X509_STRICT"):
            ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            return tls.recv(2)

    try:
        assert handshake(paths["ca_cert"], "coord.example.org") == b"ok"
        assert handshake(paths["ca_cert"], "127.0.0.1") == b"ok"  # the ServerApp's own link
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
            handshake(paths["ca_cert"], "intruder.example.org")
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            handshake(other_ca, "coord.example.org")
    finally:
        listener.close()
        thread.join(5)


def test_node_keys_are_what_flower_loads_and_are_never_overwritten(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import (bytes_to_public_key, sign_message,
                                                      verify_signature)

    paths = make_node_keys.write_node_keys(tmp_path / "k", ["hospital-0", "hospital-1"])
    private_path, public_path = paths["hospital-0"]
    assert private_path.stat().st_mode & 0o777 == 0o600
    assert public_path.read_text().startswith("ecdsa-sha2-nistp384 ")
    private = load_ssh_private_key(private_path.read_bytes(), None)  # as flower-supernode does
    # ... and as `flwr supernode register` reads the public key
    registered = bytes_to_public_key(try_load_public_key(public_path))
    signature = sign_message(private, b"2026-01-01T00:00:00")  # type: ignore[arg-type]
    assert verify_signature(registered, b"2026-01-01T00:00:00", signature)
    other = bytes_to_public_key(try_load_public_key(paths["hospital-1"][1]))
    assert not verify_signature(other, b"2026-01-01T00:00:00", signature)

    before = private_path.read_bytes()
    with pytest.raises(ValueError, match="exists"):
        make_node_keys.write_node_keys(tmp_path / "k", ["hospital-0"])
    assert private_path.read_bytes() == before
    with pytest.raises(ValueError, match="distinct"):
        make_node_keys.write_node_keys(tmp_path / "j", ["a", "a"])
    with pytest.raises(ValueError, match="letters, digits"):
        make_node_keys.write_node_keys(tmp_path / "j", ["../escape"])


def test_scripts_run_from_the_command_line(tmp_path: Path) -> None:
    certs = subprocess.run([sys.executable, ROOT / "deploy" / "make_certs.py", "--out",
                            tmp_path / "c", "--host", "10.1.2.3"], capture_output=True, text=True,
                           check=False)
    assert certs.returncode == 0, certs.stderr
    assert "valid for:     10.1.2.3, localhost, 127.0.0.1, ::1" in certs.stdout
    bad = subprocess.run([sys.executable, ROOT / "deploy" / "make_certs.py", "--out",
                          tmp_path / "d", "--host", "https://coord"], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("make_certs: --host:")
    keys = subprocess.run([sys.executable, ROOT / "deploy" / "make_node_keys.py", "--out",
                           tmp_path / "k", "h0"], capture_output=True, text=True, check=False)
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "k" / "h0.pub").exists()


def test_a_hospital_node_trains_on_its_own_folder_and_is_numbered(
        tmp_path: Path, hospitals: dict[int, Path]) -> None:
    from fl_shadow.apps.federation import Federation
    from fl_shadow.config import load_config
    from fl_shadow.errors import ConfigError

    federation = Federation(load_config(write_experiment(tmp_path), []))
    for cid, folder in hospitals.items():
        client = federation.client({"data-path": str(folder), "client-id": cid}, None)
        assert (client.client_id, client.send_audit) == (cid, False)
        data = client.data
        assert tuple(data.images.shape) == (HOSPITAL_TRAIN[cid], 1, 8, 8)
        assert sorted(data.labels.tolist()) == [0] * (HOSPITAL_TRAIN[cid] // 2) + \
            [1] * (HOSPITAL_TRAIN[cid] // 2)
    with pytest.raises(ConfigError, match=r"client-id must be in 0\.\.1 .*got 2"):
        federation.client({"data-path": str(hospitals[0]), "client-id": 2}, None)


# -- deployment engine on loopback -------------------------------------------------------------

def test_insecure_deployment_with_a_defense_loses_a_hospital_and_takes_it_back(
        tmp_path: Path, procs: Processes, hospitals: dict[int, Path]) -> None:
    """Three rounds: both hospitals; hospital 1 stopped in the middle of round 2 (SIGTERM to
    its SuperNode and ClientApp, as a shutdown does) and started again; both again."""
    link = start_superlink(procs)
    for cid, folder in hospitals.items():
        start_supernode(procs, f"hospital-{cid}", link, folder, cid)
    connection = write_connection(procs, link)
    run_dir = tmp_path / "results"
    # min_available_clients = 2: every round waits for both hospitals and then samples both
    # (the curious server waits before the strategy sizes its sample); min_fit_clients = 1: a
    # round that loses one node still aggregates the reply it got, while a round with no
    # reply would fail the run.
    start_run(procs, connection, tmp_path, write_experiment(tmp_path, rounds=3, min_fit=1),
              run_dir)
    procs.wait("both SuperNodes to join", lambda: activations(procs) == 2, 90)

    procs.wait("hospital 1 to receive round 2",
               lambda: "ROUND 2]" in procs.log("hospital-1"), 180)
    procs.kill("hospital-1", signal.SIGTERM)
    start_supernode(procs, "hospital-1-restarted", link, hospitals[1], 1)
    wait_for_run(procs, run_dir)

    assert fit_rows(run_dir) == [(1, 0), (1, 1), (2, 0), (3, 0), (3, 1)]
    fits = read_jsonl(run_dir / "fit.jsonl")
    # Each hospital trained on all of its own training images, through the defense on its
    # machine (max_norm 0.001: every local step's gradient was clipped).
    assert {r["client"]: r["num_examples"] for r in fits} == HOSPITAL_TRAIN
    assert all(r["defense_clipped_fraction"] == 1.0 for r in fits)
    assert [r["round"] for r in read_jsonl(run_dir / "utility.jsonl")] == [0, 1, 2, 3]
    assert_attacked_but_not_scored(run_dir)
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert [f["round"] for f in failures] == [2], failures
    assert "Node Unavailable" in failures[0]["error"], failures
    assert activations(procs) == 3  # hospital 0, hospital 1, and hospital 1 again


def test_tls_and_node_auth_admit_registered_hospitals_only(
        tmp_path: Path, procs: Processes, hospitals: dict[int, Path]) -> None:
    certs = make_certs.write_certificates(tmp_path / "certs", ["localhost"])
    rogue_ca = make_certs.write_certificates(tmp_path / "rogue", ["localhost"])["ca_cert"]
    keys = make_node_keys.write_node_keys(tmp_path / "keys",
                                          ["hospital-0", "hospital-1", "intruder"])
    link = start_superlink(procs, certs=certs, node_auth=True)
    connection = write_connection(procs, link, ca=certs["ca_cert"])
    node_ids = []
    for cid in hospitals:  # the coordinator registers the hospitals' public keys
        reg = operator(procs, "supernode", "register", keys[f"hospital-{cid}"][1], connection,
                       "--format", "json")
        assert reg.returncode == 0, reg.stdout + reg.stderr
        node_ids.append(str(json.loads(reg.stdout)["node-id"]))

    # The hospitals, the run, and three nodes that must be refused, all at once: an
    # unregistered key, no key at all, and a node that does not trust this SuperLink's CA.
    for cid, folder in hospitals.items():
        start_supernode(procs, f"hospital-{cid}", link, folder, cid, ca=certs["ca_cert"],
                        key=keys[f"hospital-{cid}"][0])
    run_dir = tmp_path / "results"
    start_run(procs, connection, tmp_path, write_experiment(tmp_path), run_dir)
    start_supernode(procs, "intruder", link, hospitals[0], 0, ca=certs["ca_cert"],
                    key=keys["intruder"][0])
    start_supernode(procs, "keyless", link, hospitals[0], 0, ca=certs["ca_cert"])
    start_supernode(procs, "wrong-ca", link, hospitals[0], 0, ca=rogue_ca,
                    key=keys["hospital-0"][0])
    refusals = {"intruder": "Failed to activate SuperNode",
                "keyless": "All SuperNodes must be registered via the CLI",
                "wrong-ca": "certificate verify failed"}
    for name, reason in refusals.items():
        assert procs.wait_exit(name, 90) != 0, procs.log(name)
        assert "Failed to initialize the connection to the SuperLink" in procs.log(name)
        assert reason in procs.log(name), procs.log(name)
    procs.wait("both hospitals to join", lambda: activations(procs) == 2, 90)
    listed = operator(procs, "supernode", "list", connection, "--format", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    nodes = {n["node-id"]: n["status"] for n in json.loads(listed.stdout)["nodes"]}
    assert nodes == {node_id: "online" for node_id in node_ids}  # no one else got in

    wait_for_run(procs, run_dir)
    assert activations(procs) == 2
    assert fit_rows(run_dir) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    fits = read_jsonl(run_dir / "fit.jsonl")
    assert {r["client"]: r["num_examples"] for r in fits} == HOSPITAL_TRAIN
    assert all(r["defense_clipped_fraction"] == 1.0 for r in fits)
    assert [r["round"] for r in read_jsonl(run_dir / "utility.jsonl")] == [0, 1, 2]
    assert_attacked_but_not_scored(run_dir)
    assert not read_jsonl(run_dir / "failures.jsonl")


@pytest.mark.slow
def test_a_supernode_killed_outright_is_given_up_after_missed_heartbeats(
        tmp_path: Path, procs: Processes, hospitals: dict[int, Path]) -> None:
    """SIGKILL (a crash, a power cut): the node cannot say goodbye, so the SuperLink only
    notices the missing heartbeats. The lighter SIGTERM test above covers the same failure
    path in the strategy; this one adds the detection by heartbeat."""
    link = start_superlink(procs)
    for cid, folder in hospitals.items():
        start_supernode(procs, f"hospital-{cid}", link, folder, cid)
    connection = write_connection(procs, link)
    run_dir = tmp_path / "results"
    experiment = write_experiment(tmp_path, rounds=2, min_fit=1, min_available=2, attack=False)
    start_run(procs, connection, tmp_path, experiment, run_dir)

    procs.wait("hospital 1 to receive round 2",
               lambda: "ROUND 2]" in procs.log("hospital-1"), 180)
    procs.kill("hospital-1", signal.SIGKILL)  # the SuperNode and its ClientApp, at once
    killed_at = time.monotonic()
    wait_for_run(procs, run_dir)
    # Given up two missed heartbeats (30 s apart in flwr 1.41) after the last one: 30-60 s.
    assert 20 < time.monotonic() - killed_at < 90
    assert fit_rows(run_dir) == [(1, 0), (1, 1), (2, 0)]
    failures = read_jsonl(run_dir / "failures.jsonl")
    assert [f["round"] for f in failures] == [2], failures
    assert "Node Unavailable" in failures[0]["error"], failures


# -- simulation engine on an existing Ray cluster ----------------------------------------------

RAY_EXPERIMENT = """\
name: ray-cluster-test
seed: 3
data: {dataset: mni152, image_size: 16, channels: 1}
partition: {scheme: sizes, num_clients: 2, sizes: [2, 6], batch_sizes: [2, 3]}
model: {name: convnet, width: 4}
train: {rounds: 2, lr: 0.01, device: cpu}
strategy: {min_fit_clients: 2, min_available_clients: 2}
defense: {name: clipping, params: {max_norm: 0.001}}
attack: {name: none}
"""


def test_simulation_runs_on_a_ray_cluster_started_beforehand(tmp_path: Path,
                                                              procs: Processes) -> None:
    # A short private temp dir: Ray's socket paths must stay under 107 characters, and the
    # cluster's address file (ray_current_cluster) must not be where other Ray users look.
    ray_tmp = Path(tempfile.mkdtemp(prefix="flr", dir="/tmp"))
    procs.markers.append(str(ray_tmp))
    head_port = free_port()
    try:
        head = procs.start("ray-head", [
            BIN / "ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", head_port, "--num-cpus", 2, "--num-gpus", 0,
            "--object-store-memory", 200 * 1024 * 1024, "--temp-dir", ray_tmp,
            "--include-dashboard", "false", "--disable-usage-stats",
            "--ray-client-server-port", free_port(), "--node-manager-port", free_port(),
            "--object-manager-port", free_port(), "--runtime-env-agent-port", free_port(),
            "--dashboard-agent-listen-port", free_port(),
            "--dashboard-agent-grpc-port", free_port(), "--metrics-export-port", free_port()])
        # The SuperLink runs on the head node; the simulation it starts joins the cluster.
        link = start_superlink(procs, simulation=True, RAY_ADDRESS=f"127.0.0.1:{head_port}")
        connection = write_connection(procs, link)
        procs.wait("the Ray head", lambda: (ray_tmp / "ray_current_cluster").exists()
                   or head.poll() is not None, 90)
        assert head.poll() is None, procs.log("ray-head")
        experiment = tmp_path / "ray.yaml"
        experiment.write_text(RAY_EXPERIMENT)
        run_dir = tmp_path / "results"
        start_run(procs, connection, tmp_path, experiment, run_dir, "--federation-config",
                  "num-supernodes=2 client-resources-num-cpus=1")
        wait_for_run(procs, run_dir)

        assert fit_rows(run_dir) == [(1, 0), (1, 1), (2, 0), (2, 1)]
        assert all(r["defense_clipped_fraction"] == 1.0
                   for r in read_jsonl(run_dir / "fit.jsonl"))
        # The ClientApps ran in this cluster's worker processes: their log lines are in the
        # head's session logs (a simulation that started its own Ray would log elsewhere).
        logs = "".join(p.read_text(errors="replace")
                       for p in ray_tmp.glob("session_*/logs/worker-*") if p.is_file())
        assert "client 0 round 1:" in logs and "client 1 round 2:" in logs
    finally:
        procs.close()  # before the temp dir goes: Ray's processes still write there
        shutil.rmtree(ray_tmp, ignore_errors=True)
