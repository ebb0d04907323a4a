"""Running ``decode_upload`` in a child process with a time bound.

Each upload is decoded in its own process, forked from a forkserver that has
the decoders imported. A file that takes too long is stopped by killing exactly
its process, and a decoder crash cannot take the ingest process down.
The call that waits for the child blocks, so the upload handler runs it with
``asyncio.to_thread`` and the event loop never waits on decoding.
"""

from __future__ import annotations

import multiprocessing
import traceback
from multiprocessing.connection import Connection

from services.ingest.activities.decode import DecodedUpload, decode_upload
from services.ingest.activities.model import ActivityFileError, ActivityFormat

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["services.ingest.activities.decode"])

# Seconds to wait for a killed or finished child to be reaped.
_JOIN_TIMEOUT_S = 5.0


class DecodeTimeout(Exception):
    """Decoding did not finish within the time bound; the child was killed."""


class DecodeWorkerError(Exception):
    """The decoding process failed in a way no bad file should cause: it crashed or raised an unexpected error."""


def _decode_in_child(connection: Connection, body: bytes, declared: ActivityFormat | None) -> None:
    try:
        outcome: tuple = ("decoded", decode_upload(body, declared))
    except ActivityFileError as error:
        outcome = ("rejected", error)
    except Exception:
        outcome = ("failed", traceback.format_exc(limit=20))
    connection.send(outcome)
    connection.close()


def decode_in_process(body: bytes, declared: ActivityFormat | None, timeout_s: float) -> DecodedUpload:
    """Decode ``body`` in a child process and return what it derived.

    Raises ActivityFileError for a bad file, DecodeTimeout after ``timeout_s``
    and DecodeWorkerError when the child dies or fails unexpectedly. Blocks the
    calling thread; the child is always killed or reaped before this returns.
    """
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(target=_decode_in_child, args=(sender, body, declared), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise DecodeTimeout(f"decoding took longer than {timeout_s} s")
        kind, payload = receiver.recv()
    except EOFError:
        raise DecodeWorkerError(f"the decoding process exited without a result (exit code {process.exitcode})") from None
    finally:
        if process.is_alive():
            process.kill()
        process.join(_JOIN_TIMEOUT_S)
        receiver.close()

    if kind == "rejected":
        raise payload
    if kind == "failed":
        raise DecodeWorkerError(f"the decoder raised an unexpected error:\n{payload}")
    return payload
