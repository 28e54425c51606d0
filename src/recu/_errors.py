"""One-line error messages for exceptions of foreign libraries; standard library only, so every layer can use it."""

from __future__ import annotations

__all__ = ["error_line"]


def error_line(e: BaseException) -> str:
    """One line for an exception of ``torch.load``: its type and the line that says what is wrong.

    torch's weights-only refusal runs to a dozen lines whose first advises ``weights_only=False``
    (running the file's code); the unpickler's own reason (e.g. "Unsupported operand 180") is kept.
    """
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0].startswith("Weights only load failed"):
        after = text.split("WeightsUnpickler error:", 1)
        reason = next((line.strip() for line in after[1].splitlines() if line.strip()), "") if len(after) > 1 else ""
        return f"the weights-only unpickler refused it ({reason or 'not a torch.save file'})"
    return f"{type(e).__name__}: {lines[0]}"
