"""Activity file uploads: FIT, GPX and TCX recordings become score events.

Decoding and metric derivation are plain functions (``detect``, ``fit``, ``gpx``,
``tcx``, ``efforts``, ``derive``), and ``worker`` runs them in a child process.
``scoring`` turns the derived measurements into score events. ``upload`` is the
POST /v1/activities handler.

Errors::

    ActivityFileError     the upload is not a usable activity file (HTTP 422)
    DecodeTimeout         decoding took longer than the time bound (HTTP 422)
    DecodeWorkerError     the decoding process failed unexpectedly (HTTP 500)
"""
