"""Certificates for the local control plane (no cluster needed)."""
import ipaddress

from cryptography import x509
from cryptography.x509.oid import NameOID

from stoker.devcluster import pki
from stoker.devcluster.clusterdefs import GPU_RESOURCE, KWOK_ANNOTATION
from stoker.devcluster.nodes import kwok_node_manifest


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_chain_to_the_ca_with_the_right_identities(tmp_path):
    pki.ensure_pki(tmp_path, "10.96.0.1")
    ca = load(tmp_path / "ca.crt")
    for stem in ("apiserver", "admin", "controller-manager", "scheduler"):
        load(tmp_path / f"{stem}.crt").verify_directly_issued_by(ca)

    sans = load(tmp_path / "apiserver.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.96.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)

    admin = load(tmp_path / "admin.crt").subject
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    kcm = load(tmp_path / "controller-manager.crt").subject
    assert kcm.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"


def test_pki_is_made_once(tmp_path):
    pki.ensure_pki(tmp_path, "10.96.0.1")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    pki.ensure_pki(tmp_path, "10.96.0.1")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_kwok_node_advertises_gpus_and_is_selected_by_kwok():
    node = kwok_node_manifest("n1", gpus=8, zone="zone-b", labels={"pool": "x"})
    assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
    assert node["status"]["capacity"][GPU_RESOURCE] == "8"
    labels = node["metadata"]["labels"]
    assert labels["topology.kubernetes.io/zone"] == "zone-b"
    assert labels["nvidia.com/gpu.product"]
    assert labels["pool"] == "x"
    key, value = KWOK_ANNOTATION
    assert node["metadata"]["annotations"][key] == value and labels[key] == value
