"""What went wrong on the way to the Hub, as one line: huggingface_hub's exceptions (gated,
missing repo, bad revision, missing file, offline, HTTP errors) and the network's (refused,
timed out, dropped) become a SpectraError that names the model and what to do."""

from __future__ import annotations

from contextlib import contextmanager

from spectra.errors import SpectraError, first_line
from spectra.hub.ids import HubId


def endpoint() -> str:
    """The Hub that huggingface_hub talks to ($HF_ENDPOINT, else huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _status(exc) -> str:
    response = getattr(exc, "response", None)
    status = f"HTTP {response.status_code}" if response is not None else "HTTP error"
    message = getattr(exc, "server_message", None) or first_line(exc)
    return f"{status}: {first_line(Exception(message))}"


@contextmanager
def hub_errors(model: HubId):
    """Turn huggingface_hub's and the network's errors inside the block into one line."""
    import httpx2
    from huggingface_hub import errors

    where = endpoint()
    try:
        yield
    except errors.GatedRepoError:
        raise SpectraError(
            f"{model}: a gated model; accept its conditions on {where}/{model.repo_id} and log in "
            "(hf auth login, or set HF_TOKEN)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise SpectraError(
            f"{model}: no such file or folder, and no such model on {where} (a private one "
            "needs a login: hf auth login, or set HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        raise SpectraError(
            f"{model}: no revision {model.revision!r} on {where} (a branch, tag or commit hash)"
        ) from None
    except errors.RemoteEntryNotFoundError as exc:
        raise SpectraError(f"{model}: a file is missing on {where} ({_status(exc)})") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        raise not_cached(model) from None
    except errors.HfHubHTTPError as exc:
        raise SpectraError(f"{model}: {where} answered {_status(exc)}") from None
    except httpx2.RequestError as exc:
        raise SpectraError(f"{model}: cannot reach {where} ({first_line(exc)})") from None


def not_cached(model: HubId) -> SpectraError:
    """The error of a model that is not in the Hugging Face cache while the Hub is off."""
    from huggingface_hub import constants

    return SpectraError(
        f"{model}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub is off "
        "(HF_HUB_OFFLINE); download it first, or go online"
    )
