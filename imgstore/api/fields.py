"""What a request field accepts: the patterns, enums and bounds the services check in
ZStack's words, spelled for /openapi.json (api/schemas.py's models use them)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictBool, WithJsonSchema

from imgstore.services.catalog.tags import MAX_TAG_LENGTH
from imgstore.services.images.export import EXPORT_FORMATS
from imgstore.services.images.hashing import ALGORITHMS
from imgstore.services.images.manage import ARCHITECTURES, FORMATS, MEDIA_TYPES, PLATFORMS

# The services check these in ZStack's words; the document says them too (as patterns,
# enums, bounds), so that a client generated from /openapi.json sends what is accepted.


def doc(**schema: Any) -> Any:
    """An optional field (None by default) and what the document says of it, beyond what
    pydantic checks."""
    return Field(default=None, json_schema_extra=schema)


#: what Python's str.strip() removes, spelled out: a pattern's ``\s`` is ECMA-262's in a
#: JSON Schema, which leaves out U+001C-U+001F and U+0085 and takes U+FEFF
SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NON_BLANK = rf"^[^\x00]*[^\x00{SPACE}][^\x00]*$"  # a name or a tag: stripped, it must not be empty
UUID_PATTERN = "^[0-9a-f]{32}$"
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$"  # services/storage/mons.py
# user:password@host[:sshPort][/?monPort=N] (imgstore/ceph/monurl.py; a subset: no escapes)
MON_URL = (r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}:[A-Za-z0-9._~!$&'()*+,;=-]{1,64}@"
            r"[a-z](?:[a-z0-9-]{0,29}[a-z0-9])?(?:\.[a-z](?:[a-z0-9-]{0,29}[a-z0-9])?)*"  # no label ends in -
            r"(?::(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}))?(?:/(?:\?monPort=(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}))?)?$")
POOL_NAME = r"^[^\s\"'`,;=/@\\\x00-\x1f\x7f-][^\s\"'`,;=/@\\\x00-\x1f\x7f]{0,254}$"
TAG = {"type": "string", "pattern": NON_BLANK, "maxLength": MAX_TAG_LENGTH}
TAGS = {"items": TAG}
FINGERPRINT = r"^SHA256:[A-Za-z0-9+/]{43}=?$"
#: what AddImage takes (services/images/sources.py): http(s) with a host, or upload:// (to
#: one storage); file:/// only where the operator allows a directory, so not here
IMAGE_URL = (r"^(?:https?://[A-Za-z0-9.-]+(?::[1-9][0-9]{0,3})?(?:[/?#][^\x00-\x20\x7f" + SPACE + r"]*)?"
              r"|upload://[^\x00]*)$")  # no control character: the URL parser refuses them


_LONG_S = "\u017f"  # str.upper() turns it into S


def _upper_form(c: str) -> str:
    """The characters str.upper() turns into ``c``."""
    return "[" + c + c.lower() + (_LONG_S if c == "S" else "") + "]" if c.isalpha() else c


#: what services/images/hashing.algorithm_of reads: any case, hyphens anywhere, blanks around
HASH_ALGORITHM = (rf"^[{SPACE}]*-*(?:" + "|".join("-*".join(_upper_form(c) for c in name) for name in ALGORITHMS)
                   + rf")-*[{SPACE}]*$")
_ENUM: dict[str, list[str]] = {  # a nullable string field that takes one of these
    "mediaType": list(MEDIA_TYPES), "format": list(FORMATS), "platform": list(PLATFORMS),
    "architecture": list(ARCHITECTURES), "exportFormat": list(EXPORT_FORMATS),
}


def one_of(name: str) -> Any:
    return doc(enum=[*_ENUM[name], None])


def _bool_string(value: object) -> object:
    """"true" and "false" in any case become the boolean, as ZStack's Gson reads a boolean
    field sent as a string; anything else goes to StrictBool as it is."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


ZBool = Annotated[StrictBool, BeforeValidator(_bool_string), WithJsonSchema(
    {"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$"}]})]
"""A ZStack boolean field: JSON true or false, or the string "true" or "false" in any case
(Gson takes them; a script may send them). Other strings, which Gson would read as false,
and numbers are refused with the field named."""
