"""Settings, read from the environment (prefix SAEX_, and DATABASE_URL) and an optional TOML file; the only
module that reads environment variables. Nothing here loads a model or opens a database."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT / "artifacts" / "demo"  # the embedded default model and SAEs


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAEX_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default=Path("data"), description="where the SQLite file and caches live")
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SAEX_DATABASE_URL"),
        description="a SQLAlchemy URL; default a SQLite file in data_dir",
    )
    model: str | None = Field(default=None, description="model folder or TransformerLens name; default: the demo")
    saes: list[str] = Field(default_factory=list, description="SAE folders, .pt files or release:id")
    device: str = Field(default="cpu", description="cpu or cuda")
    threads: int | None = Field(default=None, description="torch threads of the worker; default: torch's choice")
    queue_size: int = Field(default=16, ge=0, description="requests that may wait for the worker before 503")
    time_budget_s: float = Field(default=60.0, gt=0, le=3600, description="the most one worker request may take, "
                                 "queueing included; past it the worker answers 503 (steering stops between tokens)")
    worker_urls: list[str] = Field(default_factory=list, description="inference workers the web app uses")
    model_slug: str | None = Field(default=None, description="a worker's name for its model, in URLs, in the API's "
                                   "`model` field and in the store; default: 'demo', or the model folder's name")
    sae_set: str = Field(default="default", description="a worker's name for its set of SAEs (one per layer at "
                         "most); several sets of one model are served by several workers")
    secret_key: str | None = Field(default=None, description="signs browser sessions; default: a random key kept in "
                                   "data_dir (set it when several web processes serve)")
    read_requires_sign_in: bool = Field(default=False, description="pages and API reads need a signed-in browser "
                                        "or an API key")
    saves_need_sign_in: bool = Field(default=False, description="saving analyses and steering results (permalinks) "
                                     "needs a signed-in browser or an API key")
    secure_cookies: bool = Field(default=False, description="session cookie only over HTTPS (set behind TLS)")
    session_hours: int = Field(default=24 * 14, ge=1, le=24 * 365, description="how long a sign-in lasts")
    frame_ancestors: str = Field(default="", pattern=r"^[^;,\r\n]*$", description="sites that may show feature "
                                 "pages' embed view (?embed=1) in a frame: CSP frame-ancestors sources, "
                                 "space-separated (e.g. 'self' https://wiki.example.org); empty: none may")
    rate_limit_per_minute: int = Field(default=120, ge=0, description="units of inference work a minute per API key "
                                       "or client address, pages and API alike (one per analyze, trace, DFA, graph, "
                                       "...; max_new_tokens/8 per steer); 0: no limit")

    trusted_proxies: list[str] = Field(default_factory=list, description="addresses of reverse proxies whose "
                                       "X-Forwarded-For/-Proto headers are believed (uvicorn's forwarded_allow_ips); "
                                       "default none: the connection's own address counts, whatever a client sends")
    base_url: str | None = Field(default=None, description="the site's public URL (https://saex.lab.example); "
                                 "redirects are built from it, never from the Host header")
    worker_token: str | None = Field(default=None, description="a shared secret the web app sends to its "
                                     "workers and workers require (all but /health) when set")
    saves_per_day_per_key: int = Field(default=1000, ge=0, description="saved results (permalinks) one API key "
                                       "may store in 24 hours; past it a save is refused (429 with Retry-After)")
    saves_per_day_per_address: int = Field(default=100, ge=0, description="saved results one client address may "
                                           "store in 24 hours without a key")
    saved_result_max_bytes: int = Field(default=256 * 1024, ge=1024, description="the largest saved result (its "
                                        "JSON); larger ones are refused (413)")

    llm_url: str | None = Field(default=None, description="an OpenAI-compatible chat-completions server for "
                                "explanations and their scoring (vLLM, llama.cpp, Ollama, `saex llm serve`), e.g. "
                                "http://127.0.0.1:8081/v1; unset: the embedded SmolLM2-135M-Instruct, in-process")
    llm_model: str | None = Field(default=None, description="the model name that server expects")
    llm_api_key: str | None = Field(default=None, description="a bearer key for that server, if it wants one")
    llm_max_in_flight: int = Field(default=4, ge=1, le=256, description="requests to it in flight at once")
    llm_budget_requests: int | None = Field(default=None, ge=1, description="the most requests one explain run "
                                            "sends (unset: no limit)")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'saex.db').resolve()}"

    def served_slug(self) -> str:
        """The model's name: model_slug, else 'demo' for the embedded default, else the folder's (or name's) last
        part."""
        if self.model_slug:
            return self.model_slug
        if not self.model:  # unset, or empty as compose passes an unset SAEX_MODEL
            return "demo"
        return Path(self.model.rstrip("/")).name or self.model

    def model_spec(self) -> str:
        return self.model or str(DEMO_DIR / "model")

    def sae_specs(self) -> list[str]:
        if self.saes:
            return self.saes
        if self.model:
            raise ValueError("a model was named without SAEs: name one SAE per layer with --sae (id=folder to "
                             "give it an id)")
        return [str(p) for p in sorted((DEMO_DIR / "saes").glob("L*")) if p.is_dir()]


def load_settings(config_file: Path | None = None, **overrides) -> Settings:
    """Environment, then the TOML file (if any), then explicit overrides (command-line flags) win."""
    file_values: dict = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"config file {config_file}: {exc}") from exc
    env = Settings()
    merged = {**env.model_dump(), **file_values, **{k: v for k, v in overrides.items() if v not in (None, [])}}
    return Settings.model_validate(merged)


def use_offline_hub() -> None:
    """Labs may be air-gapped: models and SAEs by name come from the local Hugging Face cache only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
