"""The fleet's certificates for mutual TLS between robots and the cloud: one CA, one cert per robot and the cloud.

Each certificate's common name is its holder's id (`robot_0`, `cloud`): the cloud's access control
(sop_ros.bridge.security) matches peers by it, so a robot can only act as the robot its certificate names.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FLEET_ID = re.compile(r"[A-Za-z0-9_]+")  # fullmatch: robot ids and cert common names, also used in key expressions
CA = "ca"
_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
T = TypeVar("T")
_CA_USAGE = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False)  # fmt: skip
# Every peer may both listen and connect: server and client authentication.
_PEER_USAGE = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_CURVE = ec.SECP256R1()  # P-256: accepted by rustls (Zenoh's TLS), small keys, fast handshakes


def make_fleet_certificates(out_dir: Path, robots: Sequence[str], cloud: str = "cloud", days: int = 3650,
                            hosts: Iterable[str] = (), force: bool = False) -> dict[str, Path]:  # fmt: skip
    """Write a fleet CA and a certificate + key signed by it for the cloud and for each robot.

    Layout: <out_dir>/ca.pem, ca.key, <name>.pem, <name>.key (keys mode 0600). Every certificate names
    localhost and 127.0.0.1; `hosts` (DNS names or IP addresses) are added to the cloud's, which robots verify
    against the endpoint they connect to. Existing files are kept (ValueError naming them) unless `force`.
    Returns {"ca": ca.pem, "ca.key": ..., name: name.pem, name + ".key": ...}.
    """
    names = [cloud, *robots]
    for name in names:
        if not isinstance(name, str) or not FLEET_ID.fullmatch(name):
            raise ValueError(f"id {name!r}: must be letters, digits and '_' only (it becomes a certificate's "
                             "common name and a key expression chunk)")  # fmt: skip
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or CA in names:
        raise ValueError(f"ids must be unique and not {CA!r}: {duplicates or [CA]}")
    if days < 1:
        raise ValueError(f"days={days}: must be >= 1")
    sans = {cloud: _subject_alt_names(hosts)}
    out_dir = Path(out_dir)
    paths = {CA: out_dir / f"{CA}.pem", f"{CA}.key": out_dir / f"{CA}.key"}
    for name in names:
        paths[name], paths[f"{name}.key"] = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(existing)} already exist(s): not overwritten (force=True replaces them)")
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(_CURVE)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sop fleet CA ({cloud})")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(paths[f"{CA}.key"], ca_key)
    _write_cert(paths[CA], ca_cert)
    for name in names:
        key = ec.generate_private_key(_CURVE)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans.get(name, _subject_alt_names(()))), critical=False)
            .add_extension(_PEER_USAGE, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(paths[f"{name}.key"], key)
        _write_cert(paths[name], cert)
    return paths


def certificate_common_name(path: Path) -> str:
    """The common name of a PEM certificate (the id the cloud's access control knows its holder by)."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError(f"{path}: certificate has no common name")
    return str(names[0].value)


def check_certificate(root_ca: Path, certificate: Path, private_key: Path) -> str:
    """The common name of `certificate` after checking that the CA signed it, that it is valid now, and that
    `private_key` is its key. Zenoh's TLS says none of this on the connecting side: it just never connects."""
    ca = _load(root_ca, "the root CA", x509.load_pem_x509_certificate)
    cert = _load(certificate, "the certificate", x509.load_pem_x509_certificate)
    key = _load(private_key, "the private key", lambda data: serialization.load_pem_private_key(data, None))
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError(f"certificate {certificate} was not issued by the root CA {root_ca}") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ValueError(f"certificate {certificate} is valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                         f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now")  # fmt: skip
    if key.public_key().public_bytes(*_PUBLIC) != cert.public_key().public_bytes(*_PUBLIC):
        raise ValueError(f"private key {private_key} does not belong to certificate {certificate}")
    return certificate_common_name(certificate)


def _load(path: Path, what: str, parse: Callable[[bytes], T]) -> T:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot read: {err.strerror}") from None
    try:
        return parse(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"{what} {path}: not a PEM {what.removeprefix('the ')} ({err})") from None


def _subject_alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """localhost and 127.0.0.1 (peers on one host) plus `hosts`, each an IP address or a DNS name."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for host in hosts:
        try:
            entry: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
                raise ValueError(f"host {host!r}: not an IP address or a DNS name") from None
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """A private key, readable by its owner only from the moment it exists (never briefly world-readable)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip
    path.unlink(missing_ok=True)  # force: an old file would keep its old mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
