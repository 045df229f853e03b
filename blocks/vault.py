"""The Vault connection as a Prefect block, edited in the Prefect UI (Blocks page)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from neuralops.signing import VaultTransitSigner


class VaultConnection(Block):
    """Where playbook signing keys live: a Vault (or OpenBao) transit engine. The token's
    policy needs `read`/`create`/`update` on `<mount>/keys/<key>` and `update` on
    `<mount>/sign/<key>` to sign; only `read` on `<mount>/keys/<key>` to verify."""

    _block_type_name = "NeuralOps Vault"
    _block_type_slug = "neuralops-vault"
    _description = "Vault transit engine that signs NeuralOps playbooks (ECDSA P-256)."

    address: str = Field(
        title="Address",
        description="Base URL of Vault or OpenBao, e.g. https://vault.example.com:8200.",
        pattern=r"^https?://",
    )
    token: SecretStr = Field(
        title="Token", description="A Vault token whose policy allows the transit key."
    )
    transit_mount: str = Field(
        "transit", title="Transit mount", description="Mount path of the transit engine."
    )
    key_name: str = Field(
        "neuralops-playbooks",
        title="Key name",
        description="The ecdsa-p256 transit key (created on first signing if absent).",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=600, title="Timeout (s)", description="Per-request timeout."
    )

    def signer(self) -> VaultTransitSigner:
        return VaultTransitSigner(
            self.address,
            self.token,
            key_name=self.key_name,
            mount=self.transit_mount,
            timeout_s=self.timeout_s,
        )
