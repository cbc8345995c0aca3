"""The server's TLS identity: a self-signed certificate made on first start, pinned by clients.

Clients pin the certificate's SHA-256 fingerprint (as Proxmox Backup's do), so no CA
is involved and a replaced certificate is refused until the client logs in again.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_NAME = "server.crt"
KEY_NAME = "server.key"
VALID_DAYS = 3650


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fingerprint_of_der(der: bytes) -> str:
    """Return the SHA-256 fingerprint of a DER certificate as ``AB:CD:…`` (64 hex digits)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def fingerprint_of_pem_file(path: str) -> str:
    """Return the fingerprint of the first certificate in a PEM file."""
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))


def normalize_fingerprint(text: str) -> str:
    """Return ``text`` as ``AB:CD:…``; raise ValueError when it is no SHA-256 fingerprint."""
    digits = text.strip().replace(":", "").upper()
    if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons optional)")
    return ":".join(digits[i : i + 2] for i in range(0, 64, 2))


def ensure_self_signed(state_dir: str, hosts: list[str]) -> tuple[str, str, bool]:
    """Return ``(cert, key, made)``: the state directory's certificate, made on first use.

    The key is written 0600 before the certificate, so a crash between the two leaves
    a key without a certificate, which the next start replaces.
    """
    cert_path = os.path.join(state_dir, CERT_NAME)
    key_path = os.path.join(state_dir, KEY_NAME)
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, False
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in {*hosts, socket.gethostname()}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if host:
                names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blockvault server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        os.fsync(f.fileno())
    tmp = cert_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        os.fsync(f.fileno())
    os.rename(tmp, cert_path)
    return cert_path, key_path, True


def pinned_context(pem: str) -> ssl.SSLContext:
    """Return a client context that trusts exactly the certificate ``pem`` (TLS 1.2 or newer).

    The host name is not checked: the pin is the certificate itself, which only the
    holder of its private key can present.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=pem)
    return context


def server_certificate(host: str, port: int, timeout: float = 10.0) -> bytes:
    """Return the DER certificate the server at ``host:port`` presents (unverified)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"{host}:{port} presented no certificate")
    return der
