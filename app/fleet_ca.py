"""The console's side of fleet identity: the fleet CA, enrolment of nodes, revocation, client certificates.

Files in the fleet dir (default: the platform's user data dir, `tierdeck/fleet`):
`ca.key` `ca.pem` (the fleet CA), `console.key` `console.pem` (the console's own certificate),
`members.json` (enrolled nodes and issued client certificates, by serial) and `revoked.json`.
The exchange itself is described in runners/_security.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from runners._identity import NodeIdentity
from runners._proto import tierdeck_control_pb2 as ctl
from runners._security import (
    ROLE_CLIENT,
    ROLE_CONSOLE,
    ROLE_NODE,
    cert_pem,
    create_ca,
    fingerprint,
    issue,
    key_pem,
    load_key,
    new_key,
    proof,
    proof_ok,
    transcript,
)
from runners._store import write_atomic
from runners.client import ClientTLS, NodeClient, fetch_server_certificate


class FleetError(RuntimeError):
    """A fleet operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class Member:
    """An enrolled node or an issued client certificate."""

    serial: str
    role: str
    name: str
    node_id: str = ""
    address: str = ""
    fingerprint: str = ""
    issued_unix_ms: int = 0


def default_fleet_dir() -> Path:
    """The platform's user data dir for tierdeck, `fleet` inside it."""
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("tierdeck", appauthor=False)) / "fleet"
    except ImportError:
        return Path.home() / ".local" / "share" / "tierdeck" / "fleet"


class FleetCA:
    """A fleet CA on disk. `init` creates one; the constructor loads an existing one."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        if not (directory / "ca.pem").exists():
            raise FleetError(f"no fleet CA in {directory}: run `tierdeck fleet init` first")
        self.ca_key = load_key((directory / "ca.key").read_bytes())
        self.ca_pem = (directory / "ca.pem").read_bytes()
        self.ca_cert = x509.load_pem_x509_certificate(self.ca_pem)

    @classmethod
    def init(cls, directory: Path, name: str = "tierdeck fleet CA") -> FleetCA:
        """Create a new fleet CA and the console's certificate; refuses to overwrite an existing CA."""
        if (directory / "ca.pem").exists():
            raise FleetError(f"a fleet CA already exists in {directory}")
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key, cert = create_ca(name)
        write_atomic(directory / "ca.key", key_pem(key), mode=0o600)
        write_atomic(directory / "ca.pem", cert_pem(cert))
        fleet = cls(directory)
        console_key = new_key()
        console = issue(key, cert, console_key.public_key(), ROLE_CONSOLE, "tierdeck console")
        write_atomic(directory / "console.key", key_pem(console_key), mode=0o600)
        write_atomic(directory / "console.pem", cert_pem(console))
        return fleet

    def console_tls(self) -> ClientTLS:
        """The console's credentials for mutual TLS with fleet nodes."""
        return ClientTLS(self.ca_pem, (self.dir / "console.key").read_bytes(), (self.dir / "console.pem").read_bytes())

    def members(self) -> dict[str, Member]:
        """Everything this CA has issued, by serial."""
        path = self.dir / "members.json"
        return {k: Member(**v) for k, v in json.loads(path.read_text()).items()} if path.exists() else {}

    def _save_member(self, member: Member) -> None:
        members = self.members()
        members[member.serial] = member
        text = json.dumps({k: asdict(v) for k, v in members.items()}, indent=1)
        write_atomic(self.dir / "members.json", text.encode())

    def revoked(self) -> list[int]:
        """Revoked serials."""
        path = self.dir / "revoked.json"
        return [int(s) for s in json.loads(path.read_text())] if path.exists() else []

    def node(self, node_id: str) -> Member | None:
        """The enrolment record of a node (the latest, if it was enrolled twice)."""
        found = [m for m in self.members().values() if m.role == ROLE_NODE and m.node_id == node_id
                 and int(m.serial) not in self.revoked()]
        return max(found, key=lambda m: m.issued_unix_ms) if found else None

    def issue_client(self, name: str, out_dir: Path) -> Member:
        """A certificate for a third-party OIP client (sensor app, tritonclient): key.pem, cert.pem, ca.pem."""
        key = new_key()
        cert = issue(self.ca_key, self.ca_cert, key.public_key(), ROLE_CLIENT, name)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "key.pem", key_pem(key), mode=0o600)
        write_atomic(out_dir / "cert.pem", cert_pem(cert))
        write_atomic(out_dir / "ca.pem", self.ca_pem)
        member = Member(str(cert.serial_number), ROLE_CLIENT, name, fingerprint=fingerprint(cert_pem(cert)),
                        issued_unix_ms=int(time.time() * 1000))
        self._save_member(member)
        return member

    async def enroll(self, address: str, code: str, timeout: float = 10.0) -> Member:
        """Enrol the unenrolled node at `address` whose pairing code the operator read; FleetError if refused."""
        bootstrap = await asyncio.get_running_loop().run_in_executor(None, fetch_server_certificate, address)
        console_nonce = secrets.token_bytes(32)
        async with NodeClient(address, root_pem=bootstrap, target_name="unenrolled.tierdeck") as client:
            try:
                begun = await client.control.BeginEnrollment(
                    ctl.BeginEnrollmentRequest(console_nonce=console_nonce), timeout=timeout)
            except Exception as exc:  # grpc.aio.AioRpcError and connection errors
                raise FleetError(f"{address}: enrolment could not start: {_details(exc)}") from exc
            data = transcript(begun.node_id, begun.public_key_pem, begun.node_nonce, console_nonce)
            if not proof_ok(code, "node", data, begun.node_proof):
                raise FleetError(f"{address}: the node does not know this pairing code (wrong code, or not the node "
                                 "you are looking at); nothing was issued")
            public = serialization.load_pem_public_key(begun.public_key_pem)
            cert = issue(self.ca_key, self.ca_cert, public, ROLE_NODE, begun.name or begun.node_id,  # type: ignore[arg-type]
                         node_id=begun.node_id)
            pem = cert_pem(cert)
            console_proof = proof(code, "console", transcript(begun.node_id, begun.public_key_pem, begun.node_nonce,
                                                              console_nonce, self.ca_pem, pem))
            try:
                done = await client.control.CompleteEnrollment(ctl.CompleteEnrollmentRequest(
                    console_nonce=console_nonce, node_nonce=begun.node_nonce, ca_pem=self.ca_pem,
                    certificate_pem=pem, console_proof=console_proof,
                    revoked_serials=[str(s) for s in self.revoked()]), timeout=timeout)
            except Exception as exc:
                raise FleetError(f"{address}: enrolment refused: {_details(exc)}") from exc
        member = Member(str(cert.serial_number), ROLE_NODE, begun.name, node_id=begun.node_id, address=address,
                        fingerprint=done.fingerprint, issued_unix_ms=int(time.time() * 1000))
        self._save_member(member)
        return member

    async def revoke(self, who: str) -> tuple[list[Member], dict[str, str]]:
        """Revoke by node id, client name or serial; push the list to every enrolled node. Returns (revoked, errors)."""
        members = self.members()
        hits = [m for m in members.values() if who in (m.serial, m.node_id, m.name)]
        if not hits:
            raise FleetError(f"nothing issued by this fleet matches {who!r}")
        revoked = sorted(set(self.revoked()) | {int(m.serial) for m in hits})
        write_atomic(self.dir / "revoked.json", json.dumps([str(s) for s in revoked]).encode())
        errors = await self.push_revocations()
        return hits, errors

    async def push_revocations(self, timeout: float = 5.0) -> dict[str, str]:
        """Send the revoked list to every enrolled, unrevoked node; returns errors by node id."""
        revoked = self.revoked()
        errors: dict[str, str] = {}
        tls = self.console_tls()
        for member in self.members().values():
            if member.role != ROLE_NODE or int(member.serial) in revoked or not member.address:
                continue
            try:
                async with NodeClient(member.address, tls=tls, node_id=member.node_id) as client:
                    await client.control.UpdateRevocations(
                        ctl.UpdateRevocationsRequest(revoked_serials=[str(s) for s in revoked]), timeout=timeout)
            except Exception as exc:
                errors[member.node_id] = _details(exc)
        return errors


def _details(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    return str(details() if callable(details) else exc)


__all__ = ["FleetCA", "FleetError", "Member", "NodeIdentity", "default_fleet_dir"]
