"""Certificates and keys for the local control plane, made with `cryptography`.

Everything is generated once into ``<state>/pki`` and reused on later starts:
a CA, the apiserver's serving certificate, client certificates for the admin
(O=system:masters), the controller-manager and the scheduler, and the
service-account signing key pair.
"""
from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=3650)

# Client identities: file stem -> (common name, organisation or None).
CLIENTS = {
    "admin": ("stoker-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    # The apiserver's identity towards kubelets (process-node agents serve container logs to it).
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}

APISERVER_DNS = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
]


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
    )


def _load_ca(pki: Path):
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    return ca_cert, ca_key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _make_ca(pki: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("stoker-local-ca")
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", key)
    (pki / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(pki: Path, stem: str, subject: x509.Name, *, server: bool, sans=()) -> None:
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    b = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    _write_key(pki / f"{stem}.key", key)
    (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ip_sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def ensure_client_cert(pki: Path, stem: str, cn: str, org: str | None = None) -> None:
    """A client certificate ``<stem>.crt/.key`` for ``cn`` (in group ``org``), made once."""
    if not (pki / f"{stem}.crt").exists():
        _issue(pki, stem, _name(cn, org), server=False)


def ensure_serving_cert(pki: Path, stem: str, cn: str, ips: list[str], dns: list[str] = ()) -> None:
    """A serving certificate for ``ips``/``dns``; reissued when an IP is missing from it."""
    path = pki / f"{stem}.crt"
    if path.exists() and set(ips) <= _ip_sans(path):
        return
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    _issue(pki, stem, _name(cn), server=True, sans=sans)


def ensure_pki(pki: Path, service_ip: str, extra_ips: list[str] = ()) -> None:
    """Create whatever is missing under ``pki``; never replaces existing files, except the
    apiserver's serving certificate when it lacks one of ``extra_ips`` (real nodes reach the
    apiserver on their bridge's address)."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists() or not (pki / "ca.key").exists():
        _make_ca(pki)
    want = ["127.0.0.1", service_ip, *extra_ips]
    if not (pki / "apiserver.crt").exists() or not set(want) <= _ip_sans(pki / "apiserver.crt"):
        ensure_serving_cert(pki, "apiserver", "kube-apiserver", want, APISERVER_DNS)
    for stem, (cn, org) in CLIENTS.items():
        if not (pki / f"{stem}.crt").exists():
            _issue(pki, stem, _name(cn, org), server=False)
    if not (pki / "sa.key").exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki / "sa.key", key)
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def kubeconfig(pki: Path, server: str, client: str, cluster: str = "stoker-local") -> dict:
    """A self-contained kubeconfig (certificates embedded) for one client identity."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    user = f"{cluster}-{client}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{client}.crt"),
                    "client-key-data": b64(f"{client}.key"),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
