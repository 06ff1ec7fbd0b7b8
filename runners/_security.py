"""Fleet identity: the fleet CA, certificates, pairing codes and the enrolment proofs.

Enrolment design (why someone on the LAN without the code gets nothing):

* A node that has never been enrolled makes an EC P-256 key and a random pairing code of 80 bits,
  shown as 16 Crockford base32 characters (``7K2Q-M9XD-4HRT-WB6N``). The code is printed on the node
  (the operator reads it off the box or its log); it never travels over the network. The node serves
  TLS with a self-signed bootstrap certificate and answers only GetNodeInfo, health and enrolment.
* ``BeginEnrollment``: the console sends a fresh nonce; the node answers with its id, its public key,
  its own nonce and ``node_proof = HMAC(K, "node" | transcript)`` where ``K = SHA-256(domain | code)``
  and the transcript binds id, key and both nonces. The console, which was given the code by the
  operator, checks the proof: only a node that knows the code can make it, so the console signs a
  certificate only for the key of the node the operator is looking at.
* ``CompleteEnrollment``: the console sends the CA certificate, the node certificate and
  ``console_proof = HMAC(K, "console" | transcript | CA | certificate)``. The node accepts a CA only
  with a valid console proof, so nobody without the code can make a node trust their CA (impersonate
  the console). The node checks that the certificate is for its own key and id and is signed by that CA.
* Online guessing is slowed per peer (``PairingGuard``): a few wrong proofs are free, then each
  address waits 1 s, 2 s, 4 s, … (at most an hour) before it may try again. The operator's code is
  not rotated because of one peer, so a stranger cannot lock the operator out by sending wrong
  proofs; only after 1,000 wrong proofs in all (many addresses: a distributed guess) does the node
  make a new code, print it on its stdout JSON line and advertise a new ``pgen``, which the console
  shows. Offline guessing from a recorded node proof means searching 2^80 codes: out of reach.
* After enrolment every connection is mutual TLS with certificates from the fleet CA. Node
  certificates carry the SANs ``<node id>.node.tierdeck`` and ``node.tierdeck``; a client that dials
  with ``grpc.ssl_target_name_override=<claimed id>.node.tierdeck`` connects only to the node that
  really holds that id. The console's certificate carries ``console.tierdeck``; third-party OIP clients
  get ``client.tierdeck`` certificates. Revoked serials are pushed to every node and refused there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DOMAIN = b"tierdeck-pairing-v1"
ROLE_NODE, ROLE_CONSOLE, ROLE_CLIENT = "node", "console", "client"
ROLES = (ROLE_NODE, ROLE_CONSOLE, ROLE_CLIENT)
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U


def node_host(node_id: str) -> str:
    """The DNS SAN that names one node; dial with ssl_target_name_override set to it."""
    return f"{node_id}.node.tierdeck"


def role_host(role: str) -> str:
    """The DNS SAN every certificate of a role carries."""
    return f"{role}.tierdeck"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PEM (PKCS#8, unencrypted) of a private key."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PEM of the public half."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Load a PEM private key (EC only)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(pem: bytes) -> str:
    """SHA-256 over the certificate's DER, hex (what the `fp` TXT key carries)."""
    cert = x509.load_pem_x509_certificate(pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(name: str = "tierdeck fleet CA", days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed fleet CA."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, public_key: ec.EllipticCurvePublicKey,
          role: str, name: str, node_id: str = "", days: int = 825,
          not_before: dt.datetime | None = None) -> x509.Certificate:
    """A leaf certificate of the fleet for a node, the console or a third-party client."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    sans: list[x509.GeneralName] = [x509.DNSName(role_host(role))]
    if role == ROLE_NODE:
        if not node_id:
            raise ValueError("a node certificate needs the node id")
        sans.insert(0, x509.DNSName(node_host(node_id)))
    start = not_before or (_now() - dt.timedelta(minutes=5))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or role),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)])
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(public_key)
        .serial_number(x509.random_serial_number()).not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def self_signed(key: ec.EllipticCurvePrivateKey, node_id: str) -> x509.Certificate:
    """The bootstrap certificate an unenrolled node serves TLS with."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"unenrolled {node_id}"[:64])])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_host(node_id)),
                                                    x509.DNSName("unenrolled.tierdeck")]), critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a verified mutual-TLS connection."""

    role: str
    name: str
    serial: int
    node_id: str


def peer_from_pem(pem: bytes) -> Peer:
    """Read role, name, serial and node id from a (chain-verified) peer certificate."""
    cert = x509.load_pem_x509_certificate(pem)
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    role = str(units[0].value) if units else ""
    node_id = ""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for host in sans.get_values_for_type(x509.DNSName):
            if host.endswith(".node.tierdeck"):
                node_id = host.removesuffix(".node.tierdeck")
    except x509.ExtensionNotFound:
        pass
    return Peer(role=role, name=str(names[0].value) if names else "", serial=cert.serial_number, node_id=node_id)


class PairingGuard:
    """Wrong pairing proofs per peer: `free` of them, then exponential back-off; a rotation only for many peers."""

    def __init__(self, free: int = 3, base_s: float = 1.0, max_s: float = 3600.0, rotate_after: int = 1000,
                 max_peers: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.base_s, self.max_s, self.rotate_after = free, base_s, max_s, rotate_after
        self.max_peers = max_peers
        self.clock = clock
        self.total_wrong = 0      # since the current code was made
        self._peers: OrderedDict[str, tuple[int, float]] = OrderedDict()  # peer -> (wrong proofs, blocked until)

    def wait_s(self, peer: str) -> float:
        """Seconds `peer` must wait before its next attempt (0 = it may try now)."""
        entry = self._peers.get(peer)
        return max(0.0, entry[1] - self.clock()) if entry else 0.0

    def wrong(self, peer: str) -> tuple[float, bool]:
        """Count a wrong proof from `peer`; returns (its back-off in seconds, whether the code must rotate)."""
        count = self._peers.pop(peer, (0, 0.0))[0] + 1
        backoff = 0.0 if count <= self.free else min(self.max_s, self.base_s * 2 ** (count - self.free - 1))
        self._peers[peer] = (count, self.clock() + backoff)
        while len(self._peers) > self.max_peers:  # bounded memory; the oldest entries go first
            self._peers.popitem(last=False)
        self.total_wrong += 1
        return backoff, self.total_wrong >= self.rotate_after

    def rotated(self) -> None:
        """A new code was made: the count toward the next rotation starts again (per-peer back-offs stay)."""
        self.total_wrong = 0

    def succeeded(self, peer: str) -> None:
        """The peer proved the code."""
        self._peers.pop(peer, None)


def peer_address(peer: str) -> str:
    """A gRPC peer string ("ipv4:10.1.0.7:50512", "ipv6:[::1]:5") without its port: whom to rate-limit."""
    if peer.startswith("ipv6:[") and "]" in peer:
        return peer[: peer.index("]") + 1]
    if peer.startswith("ipv4:"):
        return peer.rpartition(":")[0]
    return peer


def new_pairing_code() -> str:
    """80 random bits as 16 Crockford base32 characters in groups of four."""
    value = secrets.randbits(80)
    chars = "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in range(16))
    return "-".join(chars[i:i + 4] for i in range(0, 16, 4))


def normalize_code(code: str) -> str:
    """What the operator typed, without dashes, spaces or case, with Crockford's look-alikes mapped."""
    cleaned = code.upper().replace("-", "").replace(" ", "")
    return cleaned.translate(str.maketrans("OIL", "011"))


def _key(code: str) -> bytes:
    return hashlib.sha256(DOMAIN + normalize_code(code).encode()).digest()


def transcript(*parts: bytes | str) -> bytes:
    """An unambiguous hash of the enrolment messages (length-prefixed parts)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.digest()


def proof(code: str, role: str, data: bytes) -> bytes:
    """HMAC-SHA256 under the pairing code, separated by role so one side's proof never serves the other."""
    return hmac.new(_key(code), role.encode() + b"|" + data, hashlib.sha256).digest()


def proof_ok(code: str, role: str, data: bytes, given: bytes) -> bool:
    """Constant-time check of a proof."""
    return hmac.compare_digest(proof(code, role, data), given)


def verify_issued(cert_pem_bytes: bytes, ca_pem: bytes, key: ec.EllipticCurvePrivateKey, node_id: str) -> None:
    """Check that a node certificate is for this key and id and is signed by this CA; ValueError otherwise."""
    cert = x509.load_pem_x509_certificate(cert_pem_bytes)
    ca = x509.load_pem_x509_certificate(ca_pem)
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ValueError("the certificate is not for this node's key")
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as exc:  # InvalidSignature, ValueError, TypeError
        raise ValueError(f"the certificate is not signed by the given CA: {exc}") from exc
    peer = peer_from_pem(cert_pem_bytes)
    if peer.role != ROLE_NODE or peer.node_id != node_id:
        raise ValueError(f"the certificate names {peer.role} {peer.node_id!r}, not node {node_id!r}")
