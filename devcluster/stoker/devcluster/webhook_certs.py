"""Webhook certificates in the form open-policy-agent's cert-controller (used by Kubeflow's
training-operator) accepts and keeps instead of replacing: an RSA CA whose key is PKCS#1 and
whose certificate names ``ca_name``, and a serving certificate for the Service's DNS name and the
loopback address (so a local process can serve the webhook the apiserver calls).

    bundle = rotator_bundle("training-operator-ca", "training-operator.kubeflow.svc", ["127.0.0.1"])
    bundle["ca.crt"], bundle["ca.key"], bundle["tls.crt"], bundle["tls.key"]   # PEM bytes
"""
from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=3650)   # the cert-controller renews what expires within 90 days


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_encipherment=not ca, content_commitment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _builder(subject: str, issuer: str, public_key, sans: list[x509.GeneralName]) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False))


def rotator_bundle(ca_name: str, dns_name: str, ips: list[str]) -> dict[str, bytes]:
    """CA + serving certificate, keyed as the cert-controller's Secret is (ca.crt, ca.key, tls.crt, tls.key)."""
    ca_key, key = _key(), _key()
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), [x509.DNSName(ca_name)])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(_usage(ca=True), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName(dns_name), *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)]
    cert = (_builder(dns_name, ca_name, key.public_key(), sans)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(ca_key),
            "tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": _pem_key(key)}
