"""The node's side of fleet identity: its key, bootstrap or fleet certificate, CA, revocations, pairing code."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc

from runners._security import (
    ROLE_CONSOLE,
    ROLES,
    PairingGuard,
    Peer,
    cert_pem,
    fingerprint,
    key_pem,
    load_key,
    new_key,
    new_pairing_code,
    node_host,
    peer_from_pem,
    proof,
    proof_ok,
    public_pem,
    role_host,
    self_signed,
    transcript,
    verify_issued,
)
from runners._store import write_atomic

log = logging.getLogger("tierdeck.identity")


class AccessDenied(Exception):
    """A caller that may not do this; `code` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeIdentity:
    """Files under DATA/tls; every method is blocking and cheap (the agent calls them from its I/O thread)."""

    def __init__(self, root: Path, node_id: str, insecure: bool) -> None:
        self.dir = root / "tls"
        self.node_id = node_id
        self.insecure = insecure
        self.pairing_code = ""
        self.code_generation = 0  # bumped whenever the code changes (advertised as TXT `pgen`)
        self.guard = PairingGuard()
        # Called (code, reason) from the I/O thread whenever a new code replaces one an operator may have read.
        self.on_code_changed: Callable[[str, str], None] | None = None
        self._pending: dict[bytes, bytes] = {}  # node nonce -> console nonce, for begun enrolments
        self.revoked: set[int] = set()
        if insecure:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key_file = self.dir / "node.key"
        if not key_file.exists():
            write_atomic(key_file, key_pem(new_key()), mode=0o600)
        self.key = load_key(key_file.read_bytes())
        if not (self.dir / "bootstrap.pem").exists():
            write_atomic(self.dir / "bootstrap.pem", cert_pem(self_signed(self.key, node_id)))
        revoked = self.dir / "revoked.json"
        if revoked.exists():
            self.revoked = {int(s) for s in json.loads(revoked.read_text())}
        if not self.enrolled:
            self.pairing_code = new_pairing_code()

    @property
    def enrolled(self) -> bool:
        """True once the node holds a certificate of a fleet CA."""
        return not self.insecure and (self.dir / "node.pem").exists() and (self.dir / "ca.pem").exists()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate the node serves with ("" without TLS)."""
        if self.insecure:
            return ""
        return fingerprint((self.dir / ("node.pem" if self.enrolled else "bootstrap.pem")).read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """Mutual TLS once enrolled, server-only TLS with the bootstrap certificate before; None = insecure."""
        if self.insecure:
            return None
        key = key_pem(self.key)
        if self.enrolled:
            return grpc.ssl_server_credentials([(key, (self.dir / "node.pem").read_bytes())],
                                               root_certificates=(self.dir / "ca.pem").read_bytes(),
                                               require_client_auth=True)
        return grpc.ssl_server_credentials([(key, (self.dir / "bootstrap.pem").read_bytes())])

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """What this node dials its next hops with (its fleet certificate); None = insecure."""
        if not self.enrolled:
            return None
        return grpc.ssl_channel_credentials((self.dir / "ca.pem").read_bytes(), key_pem(self.key),
                                            (self.dir / "node.pem").read_bytes())

    @staticmethod
    def target_name(node_id: str) -> str:
        """The name a next hop's certificate must carry."""
        return node_host(node_id) if node_id else role_host("node")

    # -- authorisation -----------------------------------------------------------------------------
    def authorize(self, auth_context: dict[str, list[bytes]], need: str) -> Peer | None:
        """Check the verified peer of an RPC; `need` is "console", "fleet" or "enrol". Raises AccessDenied."""
        if self.insecure:
            return None
        if not self.enrolled:
            if need in ("enrol", "info"):
                return None
            raise AccessDenied(grpc.StatusCode.UNAUTHENTICATED,
                               "this node is not enrolled in a fleet yet: pair it with the code it printed "
                               "(tierdeck fleet enroll HOST:PORT --code CODE)")
        if need == "enrol":
            raise AccessDenied(grpc.StatusCode.FAILED_PRECONDITION, "this node is already enrolled")
        pems = auth_context.get("x509_pem_cert") or []
        if not pems:
            raise AccessDenied(grpc.StatusCode.UNAUTHENTICATED, "a fleet client certificate is required")
        peer = peer_from_pem(pems[0])
        if peer.serial in self.revoked:
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED,
                               f"certificate {peer.serial} ({peer.role} {peer.name}) has been revoked")
        if peer.role not in ROLES:
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, "certificate carries no tierdeck role")
        if need == "console" and peer.role != ROLE_CONSOLE:
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED,
                               f"only the fleet console may do this, not {peer.role} {peer.name!r}")
        return peer

    # -- enrolment ---------------------------------------------------------------------------------
    def _check_peer(self, peer: str) -> None:
        wait = self.guard.wait_s(peer)
        if wait > 0:
            raise AccessDenied(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"too many wrong pairing codes from {peer or 'this peer'}: try again in {wait:.0f} s")

    def begin(self, console_nonce: bytes, peer: str = "") -> tuple[bytes, bytes, bytes]:
        """(public key PEM, node nonce, node proof) for a console that sent this nonce (`peer`: its address)."""
        self._check_peer(peer)
        if len(console_nonce) < 16:
            raise AccessDenied(grpc.StatusCode.INVALID_ARGUMENT, "console nonce must be at least 16 bytes")
        node_nonce = secrets.token_bytes(32)
        if len(self._pending) > 64:
            self._pending.clear()
        self._pending[node_nonce] = console_nonce
        pub = public_pem(self.key)
        data = transcript(self.node_id, pub, node_nonce, console_nonce)
        return pub, node_nonce, proof(self.pairing_code, "node", data)

    def complete(self, console_nonce: bytes, node_nonce: bytes, ca: bytes, certificate: bytes,
                 console_proof: bytes, revoked: list[int], peer: str = "") -> str:
        """Accept the fleet CA and certificate if the console proved it knows the code; returns the fingerprint.

        A wrong proof costs `peer` (its address) back-off, not the operator their code (see PairingGuard).
        """
        self._check_peer(peer)
        if self._pending.get(node_nonce) != console_nonce:
            raise AccessDenied(grpc.StatusCode.FAILED_PRECONDITION, "unknown enrolment: call BeginEnrollment first")
        data = transcript(self.node_id, public_pem(self.key), node_nonce, console_nonce, ca, certificate)
        if not proof_ok(self.pairing_code, "console", data, console_proof):
            del self._pending[node_nonce]
            backoff, rotate = self.guard.wrong(peer)
            log.warning("wrong pairing code from %s%s", peer or "a peer",
                        f"; it waits {backoff:.0f} s before its next try" if backoff else "")
            if rotate:
                self.new_code(f"{self.guard.total_wrong} wrong pairing codes from several addresses")
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, "wrong pairing code"
                               + (f" (next try from this address in {backoff:.0f} s)" if backoff else ""))
        try:
            verify_issued(certificate, ca, self.key, self.node_id)
        except ValueError as exc:
            raise AccessDenied(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        self.guard.succeeded(peer)
        self.set_revoked(revoked)
        write_atomic(self.dir / "ca.pem", ca)
        write_atomic(self.dir / "node.pem", certificate)
        self.pairing_code = ""
        self._pending.clear()
        return fingerprint(certificate)

    def new_code(self, reason: str) -> str:
        """Replace the pairing code (unenrolled nodes only); tell `on_code_changed`; returns the new code."""
        self.pairing_code = new_pairing_code()
        self.code_generation += 1
        self.guard.rotated()
        self._pending.clear()
        log.warning("new pairing code %s (%s)", self.pairing_code, reason)
        if self.on_code_changed is not None:
            self.on_code_changed(self.pairing_code, reason)
        return self.pairing_code

    def set_revoked(self, serials: list[int]) -> None:
        """Replace the revoked list (persisted)."""
        self.revoked = set(serials)
        write_atomic(self.dir / "revoked.json", json.dumps(sorted(str(s) for s in self.revoked)).encode())
