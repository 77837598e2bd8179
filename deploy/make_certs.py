"""Create a local certificate authority and the SuperLink's TLS certificate.

    python deploy/make_certs.py --out ~/fl_shadow_certs --host coord.example.org --host 10.0.0.5

Writes into ``--out``:

=============  ==================================================================================
``ca.crt``     the CA certificate; every hospital (``flower-supernode --root-certificates``) and
               the operator's ``flwr`` connection (``root-certificates``) trust it
``ca.key``     the CA's private key (mode 0600); needed only to issue certificates, keep it off
               the network
``server.pem`` the SuperLink's certificate (``flower-superlink --ssl-certfile``), valid for the
               given hosts plus ``localhost``, ``127.0.0.1`` and ``::1``
``server.key`` its private key (mode 0600; ``--ssl-keyfile``)
=============  ==================================================================================

An existing ``ca.crt``/``ca.key`` pair in ``--out`` is reused, so a new server certificate (say,
for a new address) keeps every hospital's trust; the server files are always rewritten.

Why loopback is always in the certificate: since flwr 1.41 the SuperLink serves its Fleet,
Control and Runtime APIs on one HTTPS port, and its own ServerApp process connects to that port
at 127.0.0.1 (a bind-all ``--host`` is rewritten to loopback), verifying the certificate against
``--ssl-ca-certfile``; without a loopback name the ServerApp cannot start.

Keys are ECDSA P-256 (fast, accepted by OpenSSL, Python's ``ssl`` and gRPC). The certificates
carry the extensions strict X.509 verification expects (Python 3.13 turns it on by default):
CA basic constraints and key usage marked critical, subject/authority key identifiers, and the
server-auth extended key usage.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")


def subject_alternative_name(host: str) -> x509.GeneralName:
    """The SAN entry for ``host``: an IP address entry for an IPv4/IPv6 literal, else a DNS name.

    Raises:
        ValueError: ``host`` carries a port, a scheme or a path, or is not a valid host name.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ValueError(f"--host: expected a host name or an IP address without port or "
                         f"scheme, got {host!r}")
    return x509.DNSName(host.rstrip(".").lower())


def server_hosts(hosts: Sequence[str]) -> list[str]:
    """``hosts`` followed by the loopback names, without duplicates, in order."""
    seen: dict[str, None] = {}
    for host in (*hosts, *LOOPBACK_HOSTS):
        seen.setdefault(host, None)
    return list(seen)


def create_ca(*, common_name: str, days: int
              ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_server_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                             hosts: Sequence[str], *, days: int
                             ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for ``hosts`` (every one a SAN entry), signed by the CA.

    Raises:
        ValueError: no host, or an invalid one (see :func:`subject_alternative_name`).
    """
    if not hosts:
        raise ValueError("--host: give at least one host name or IP address")
    names = [subject_alternative_name(h) for h in hosts]
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    not_after = min(start + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True,
                                         key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_certificates(out: Path, hosts: Sequence[str], *, ca_days: int = 3650,
                       server_days: int = 825, ca_name: str = "fl_shadow local CA"
                       ) -> dict[str, Path]:
    """Create (or reuse) the CA in ``out`` and write a server certificate for ``hosts``.

    Args:
        out: the folder (created).
        hosts: host names / IP addresses the hospitals use to reach the SuperLink; the loopback
            names are added.
        ca_days, server_days: validity in days (the server's is capped at the CA's).
        ca_name: the CA's common name (shown by ``openssl x509 -text``).

    Returns:
        ``{"ca_cert", "ca_key", "server_cert", "server_key", "reused_ca"}`` -> path (the last
        one only when an existing CA was reused).

    Raises:
        ValueError: an invalid host, or only one of ``ca.crt``/``ca.key`` present.
    """
    out.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = out / CA_CERT, out / CA_KEY
    paths = {"ca_cert": ca_cert_path, "ca_key": ca_key_path, "server_cert": out / SERVER_CERT,
             "server_key": out / SERVER_KEY}
    all_hosts = server_hosts(hosts)
    for host in all_hosts:  # validate before anything is written
        subject_alternative_name(host)
    if ca_cert_path.exists() != ca_key_path.exists():
        raise ValueError(f"{out}: found only one of {CA_CERT} and {CA_KEY}; remove it or "
                         "restore the other")
    if ca_cert_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or \
                loaded.public_key() != ca_cert.public_key():
            raise ValueError(f"{ca_key_path}: not the private key of {ca_cert_path}")
        ca_key = loaded
        paths["reused_ca"] = ca_cert_path
    else:
        ca_key, ca_cert = create_ca(common_name=ca_name, days=ca_days)
        _write_private_key(ca_key_path, ca_key)
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key, cert = issue_server_certificate(ca_key, ca_cert, all_hosts, days=server_days)
    _write_private_key(paths["server_key"], key)
    paths["server_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """PKCS#8 PEM, unencrypted (servers start unattended), readable by the owner only."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _now() -> datetime.datetime:
    # A minute of slack for clocks that are slightly behind the coordinator's.
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make_certs", description=__doc__.split("\n")[0],
        epilog="The loopback names localhost, 127.0.0.1 and ::1 are always included.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--host", action="append", default=[], metavar="HOST",
                        help="a host name or IP address the SuperNodes use to reach the "
                             "SuperLink (repeatable)")
    parser.add_argument("--days", type=int, default=825,
                        help="server certificate validity in days (default 825)")
    parser.add_argument("--ca-days", type=int, default=3650,
                        help="CA validity in days when a new CA is created (default 3650)")
    args = parser.parse_args(argv)
    if args.days < 1 or args.ca_days < 1:
        parser.error("--days and --ca-days must be >= 1")
    try:
        paths = write_certificates(args.out, args.host, ca_days=args.ca_days,
                                   server_days=args.days)
    except ValueError as exc:
        print(f"make_certs: {exc}", file=sys.stderr)
        return 2
    origin = "reused" if "reused_ca" in paths else "created"
    print(f"CA ({origin}):  {paths['ca_cert']}  (key {paths['ca_key']})")
    print(f"SuperLink:     {paths['server_cert']}  (key {paths['server_key']})")
    print(f"valid for:     {', '.join(server_hosts(args.host))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
