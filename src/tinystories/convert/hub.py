"""The Hugging Face Hub: models in by name (through the local cache), exports out with `--push-to-hub`.

`convert --from owner/name[@revision]` (any string that is no existing path and
looks like a Hub id) downloads the model's files with `huggingface_hub`'s
`snapshot_download` into its usual cache (`HF_HUB_CACHE`, else `HF_HOME/hub`,
else `~/.cache/huggingface/hub`) and imports the snapshot folder like any
Hugging Face folder. `--offline` or `HF_HUB_OFFLINE=1` read the cache only. The
environment is read at each call (huggingface_hub reads it once, at import), so
a cache or offline switch set later is still obeyed.

`--push-to-hub owner/name` uploads an export (a folder or a GGUF file) to a model
repository, created when missing, with the token in `HF_TOKEN`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tinystories.errors import UserError

# owner/name, optionally @revision (a branch, a tag or a commit).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")

# What an import reads: configs, weights, tokenizer files (not Flax, TF, ONNX or GGUF copies of the weights).
_PATTERNS = ["*.json", "*.safetensors", "pytorch_model*.bin", "merges.txt", "tokenizer.model"]

_TRUE = ("1", "true", "yes", "on")


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise UserError("the Hugging Face Hub needs huggingface_hub: pip install 'tinystories[hub]'") from None
    return huggingface_hub


def is_hub_id(text: str) -> bool:
    """True when `text` names a Hub model (owner/name[@revision]) rather than an existing path."""
    return not os.path.exists(text) and _HUB_ID.fullmatch(text) is not None


def split_hub_id(text: str) -> tuple[str, str | None]:
    """('owner/name', revision or None)."""
    repo, _, revision = text.partition("@")
    return repo, revision or None


def hub_offline(offline: bool = False) -> bool:
    """`--offline`, or HF_HUB_OFFLINE set to a true value."""
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> str | None:
    """The cache folder as the environment says now (None: huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def download(spec: str, offline: bool = False) -> Path:
    """The local snapshot folder of Hub model `spec` (owner/name[@revision]), downloaded when needed."""
    hub = _hub()
    errors = hub.errors
    repo, revision = split_hub_id(spec)
    offline = hub_offline(offline)
    where = hub_cache_dir() or "the Hugging Face cache"
    try:
        folder = hub.snapshot_download(repo, revision=revision, cache_dir=hub_cache_dir(), local_files_only=offline,
                                       allow_patterns=_PATTERNS, token=os.environ.get("HF_TOKEN") or None)
    except (errors.RepositoryNotFoundError, errors.GatedRepoError):
        raise UserError(f"no such path, and no model {repo} on the Hugging Face Hub (or it is private or gated: "
                        "set HF_TOKEN)") from None
    except errors.RevisionNotFoundError:
        raise UserError(f"model {repo} on the Hugging Face Hub has no revision {revision!r}") from None
    except errors.LocalEntryNotFoundError:
        if offline:
            raise UserError(f"{spec} is no path and not in {where}, and offline mode (--offline or HF_HUB_OFFLINE) forbids "
                            "downloading it") from None
        raise UserError(f"cannot reach the Hugging Face Hub to download {spec} (no network?), and it is not in "
                        f"{where}") from None
    except (errors.HfHubHTTPError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"downloading {spec} from the Hugging Face Hub failed: {first}") from None
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"{spec} on the Hugging Face Hub has no config.json: not a transformers model")
    return folder


def hub_token() -> str:
    """The write token for `--push-to-hub`, from HF_TOKEN; UserError when absent."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise UserError("--push-to-hub needs a Hugging Face write token in HF_TOKEN "
                        "(make one at https://huggingface.co/settings/tokens)")
    return token


def push(path: Path, repo: str, token: str, message: str) -> str:
    """Upload an export folder (or one file) to model repository `repo`, created when missing; returns its URL."""
    hub = _hub()
    if _HUB_ID.fullmatch(repo) is None or "@" in repo:
        raise UserError(f"--push-to-hub wants a repository id owner/name, got {repo!r}")
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo, token=token, repo_type="model", exist_ok=True)
        if path.is_dir():
            api.upload_folder(repo_id=repo, folder_path=str(path), token=token, repo_type="model",
                              commit_message=message)
        else:
            api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo, token=token,
                            repo_type="model", commit_message=message)
    except Exception as e:  # HTTP errors, refused connections (httpx), a bad token: all end the push the same way
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"pushing to {repo} on the Hugging Face Hub failed: {first}") from None
    return f"https://huggingface.co/{repo}"
