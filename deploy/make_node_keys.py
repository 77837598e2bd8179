"""Create the key pairs that authenticate hospital SuperNodes to the SuperLink.

    python deploy/make_node_keys.py --out ~/fl_shadow_keys hospital-0 hospital-1

For each name, writes ``<name>`` (the SuperNode's private key, OpenSSH format, mode 0600; given to
``flower-supernode --auth-supernode-private-key`` and never leaves the hospital) and
``<name>.pub`` (its public key; the coordinator registers it with
``flwr supernode register <name>.pub <connection>``).

Format, as flwr 1.41 reads it: ``flower-supernode`` loads the private key with
``load_ssh_private_key`` and requires an elliptic-curve key; ``flwr supernode register`` loads an
OpenSSH public key and requires a NIST curve. The keys are ECDSA P-384, the curve Flower uses for
the SuperNodes' own keys (the same as ``ssh-keygen -t ecdsa -b 384 -N ''``). Best practice is
for each hospital to run this script itself and send only the ``.pub`` file to the coordinator.

An existing key is never overwritten (its public key may already be registered; replacing it
locks that hospital out) unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def generate_node_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-384 private key."""
    return ec.generate_private_key(ec.SECP384R1())


def openssh_private_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key in OpenSSH private-key format, unencrypted (the SuperNode starts unattended)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def openssh_public_bytes(key: ec.EllipticCurvePrivateKey, *, comment: str = "") -> bytes:
    """``ecdsa-sha2-nistp384 AAAA... [comment]`` followed by a newline."""
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    return line + (f" {comment}".encode() if comment else b"") + b"\n"


def write_node_keys(out: Path, names: Sequence[str], *, force: bool = False
                    ) -> dict[str, tuple[Path, Path]]:
    """Write one key pair per name into ``out`` (created).

    Returns:
        name -> (private key path, public key path).

    Raises:
        ValueError: no name, a repeated or invalid name (letters, digits, ``_.-``), or an
            existing key file without ``force``; nothing is written then.
    """
    if not names:
        raise ValueError("give at least one SuperNode name")
    for name in names:
        if not _NAME.match(name) or name.endswith(".pub"):
            raise ValueError(f"{name!r}: a SuperNode name uses letters, digits, '_', '.' and "
                             "'-' (and does not end in .pub)")
    if len(set(names)) != len(names):
        raise ValueError("SuperNode names must be distinct")
    paths = {n: (out / n, out / f"{n}.pub") for n in names}
    existing = [p for pair in paths.values() for p in pair if p.exists()]
    if existing and not force:
        raise ValueError(f"{existing[0]} exists; a registered key would stop working if it "
                         "were replaced (use --force to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    for name, (private_path, public_path) in paths.items():
        key = generate_node_key()
        private_path.unlink(missing_ok=True)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(openssh_private_bytes(key))
        public_path.write_bytes(openssh_public_bytes(key, comment=name))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make_node_keys", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help="one name per SuperNode")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--force", action="store_true", help="replace existing keys")
    args = parser.parse_args(argv)
    try:
        paths = write_node_keys(args.out, args.names, force=args.force)
    except ValueError as exc:
        print(f"make_node_keys: {exc}", file=sys.stderr)
        return 2
    for name, (private_path, public_path) in paths.items():
        print(f"{name}: private {private_path}  public {public_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
