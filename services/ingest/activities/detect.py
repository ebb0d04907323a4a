"""Telling FIT, GPX and TCX apart by media type and by content. No I/O here."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import defusedxml
import defusedxml.ElementTree

from services.ingest.activities.model import ActivityFileError, ActivityFormat

FIT_MEDIA_TYPE = "application/vnd.ant.fit"
GPX_MEDIA_TYPE = "application/gpx+xml"
TCX_MEDIA_TYPE = "application/vnd.garmin.tcx+xml"

MEDIA_TYPE_FORMATS = {
    FIT_MEDIA_TYPE: ActivityFormat.FIT,
    GPX_MEDIA_TYPE: ActivityFormat.GPX,
    TCX_MEDIA_TYPE: ActivityFormat.TCX,
}
# Media types that name no format, so the content decides.
GENERIC_MEDIA_TYPES = frozenset({"", "application/octet-stream", "application/xml", "text/xml"})

_XML_ROOT_FORMATS = {"gpx": ActivityFormat.GPX, "TrainingCenterDatabase": ActivityFormat.TCX}


class UnsupportedMediaType(ValueError):
    """The request's Content-Type is neither an activity type nor a generic one."""


def declared_format(media_type: str) -> ActivityFormat | None:
    """Return the format a Content-Type names, None for a generic type; raise UnsupportedMediaType otherwise."""
    media_type = media_type.lower()
    if media_type in MEDIA_TYPE_FORMATS:
        return MEDIA_TYPE_FORMATS[media_type]
    if media_type in GENERIC_MEDIA_TYPES:
        return None
    expected = ", ".join([*MEDIA_TYPE_FORMATS, "application/octet-stream"])
    raise UnsupportedMediaType(f"Content-Type {media_type!r} is not an activity file type; use one of {expected}")


def is_fit(body: bytes) -> bool:
    """Return whether ``body`` starts with a FIT file header (12 or 14 bytes, data type '.FIT')."""
    return len(body) >= 12 and body[0] in (12, 14) and body[8:12] == b".FIT"


def parse_xml(body: bytes) -> ElementTree.Element:
    """Parse XML with DTDs forbidden, so no entity can expand; raise ActivityFileError if it is not well-formed."""
    try:
        return defusedxml.ElementTree.fromstring(body, forbid_dtd=True)
    except defusedxml.DefusedXmlException:
        raise ActivityFileError(
            "forbidden-xml", "Forbidden XML",
            "the XML declares a DTD or entities, which activity files never need; remove the <!DOCTYPE> declaration",
        ) from None
    except ElementTree.ParseError as error:
        raise ActivityFileError("invalid-xml", "Invalid XML", f"the file is not well-formed XML: {error}") from None


def local_name(tag: str) -> str:
    """Return an element tag without its ``{namespace}`` part."""
    return tag.rpartition("}")[2]


def _content_format(body: bytes) -> tuple[ActivityFormat, ElementTree.Element | None]:
    if is_fit(body):
        return ActivityFormat.FIT, None
    if not body.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise ActivityFileError(
            "unknown-activity-format", "Unknown activity format",
            "the body is neither a FIT file (no '.FIT' header) nor GPX or TCX XML; upload a .fit, .gpx or .tcx file",
        )
    root = parse_xml(body)
    name = local_name(root.tag)
    if name not in _XML_ROOT_FORMATS:
        raise ActivityFileError(
            "unknown-activity-format", "Unknown activity format",
            f"the XML root element is <{name}>; a GPX file starts with <gpx> and a TCX file with <TrainingCenterDatabase>",
        )
    return _XML_ROOT_FORMATS[name], root


def detect_format(body: bytes, declared: ActivityFormat | None) -> tuple[ActivityFormat, ElementTree.Element | None]:
    """Return the file's format and, for XML formats, its parsed root element.

    Raises ActivityFileError when the content is no known format or differs from ``declared``.
    """
    found, root = _content_format(body)
    if declared is not None and declared is not found:
        raise ActivityFileError(
            "content-type-mismatch", "Content-Type does not match the file",
            f"the Content-Type names a {declared.value.upper()} file but the body is a {found.value.upper()} file; "
            "send the matching Content-Type or application/octet-stream",
        )
    return found, root
