"""Certificates and keys for the dev control plane: a CA, the API server's serving certificate,
client certificates (the admin in system:masters, and identities with fewer rights), and the
service-account issuer key pair. Everything is generated on first start of a cluster directory
and never committed."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALIDITY = datetime.timedelta(days=365)


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class IssuedCert:
    cert_path: Path
    key_path: Path


class DevPKI:
    """The PKI of one dev cluster directory; files live in `<dir>/pki`."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"

    def ensure(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.ca_cert.exists():
            self._make_ca()
        if not self.sa_key.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_private(self.sa_key, _pem_key(key))
            self.sa_pub.write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                )
            )
        # The node's address too: pods reach the API server there, through the `kubernetes`
        # Service (devcluster/node.py). Harmless without a node.
        from .node import NODE_ADDRESS

        self.issue("apiserver", "kube-apiserver", server=True, ips=("127.0.0.1", "10.0.0.1", NODE_ADDRESS),
                   dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                              "kubernetes.default.svc.cluster.local"))

    def _make_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signing-key-operator dev CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CERT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key, _pem_key(key))
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _names_cover(cert_path: Path, ips: tuple[str, ...], dns_names: tuple[str, ...]) -> bool:
        """Whether a certificate issued earlier names every address asked for now (a folder
        made before the node existed lacks the node's address)."""
        if not (ips or dns_names):
            return True
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        have_ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
        return set(ips) <= have_ips and set(dns_names) <= set(names.get_values_for_type(x509.DNSName))

    def issue(
        self,
        file_stem: str,
        common_name: str,
        groups: tuple[str, ...] = (),
        *,
        server: bool = False,
        ips: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
    ) -> IssuedCert:
        """A certificate signed by the dev CA. Client certificates carry the user in CN and the
        groups in O, which is how kube-apiserver's x509 authenticator reads them."""
        cert_path = self.dir / f"{file_stem}.crt"
        key_path = self.dir / f"{file_stem}.key"
        if cert_path.exists() and key_path.exists() and self._names_cover(cert_path, ips, dns_names):
            return IssuedCert(cert_path, key_path)
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CERT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(name) for name in dns_names]
                    + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(key_path, _pem_key(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return IssuedCert(cert_path, key_path)
