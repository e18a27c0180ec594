"""Bytes -> text: the encoding detected, binary content refused, the text tidied.

UTF-8 (with or without BOM), UTF-16/32 (BOM, or UTF-16 recognised without one), a
charset the file declares, else the legacy 8-bit encoding whose text looks least like
mojibake. A file that is not text raises IngestError with a one-line reason.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

from rag.records import IngestError

# UTF-32 first: its little-endian BOM starts with the UTF-16 one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Renamed binaries, named in the error so the user knows what the file really is.
_MAGIC_NUMBERS = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive or Office file"),
    (b"%PDF-", "a PDF file"),
    (b"\x7fELF", "a program"),
    (b"\x1f\x8b", "a gzip archive"),
)

# C0 control bytes that never occur in text (tab, line feed, form feed... do).
_CONTROL_BYTES = bytes(set(range(32)) - set(b"\t\n\v\f\r"))
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A few stray NULs are removed; more than 1 % control bytes means binary data.
_MAX_CONTROL_RATIO = 0.01
_MAX_STRAY_CONTROLS = 4
_SAMPLE_CHARS = 100_000


def decode_text(raw: bytes, declared: str | None = None) -> tuple[str, str]:
    """Decode file bytes to text with "\\n" line ends; return (text, encoding used).

    Order: byte-order mark, UTF-16 without one (NUL pattern; tested before UTF-8 because
    UTF-16 of ASCII text is valid UTF-8 full of NULs), strict UTF-8, the `declared`
    encoding (an HTML meta charset), then the cleanest reading among cp1252, cp1251,
    koi8-r and charset-normalizer's best guess. Stray control characters (NULs) are
    removed; binary content raises IngestError.
    """
    _reject_known_binary(raw)
    text, encoding = _decode(raw, declared)
    _reject_unlikely_text(text)
    return tidy_text(text), encoding


def tidy_text(text: str) -> str:
    """ "\n" line ends (so line numbers match an editor's) and no control characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_CHARS.sub("", text)


def _decode(raw: bytes, declared: str | None) -> tuple[str, str]:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return _decode_strict(raw[len(bom) :], encoding), encoding
    utf16 = _utf16_without_bom(raw)
    if utf16:
        return utf16
    _reject_binary(raw)
    declared = _WHATWG_ALIASES.get(declared.lower(), declared) if declared else None
    for encoding in ("utf-8", declared):
        if encoding:
            try:
                return raw.decode(encoding), encoding
            except (UnicodeDecodeError, LookupError):
                pass
    return _decode_legacy(raw)


# As browsers do: pages labelled Latin-1 or ASCII are read as cp1252 (its superset).
_WHATWG_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "us-ascii": "cp1252"}


def _decode_strict(raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise IngestError(f"invalid {encoding} text at byte {exc.start}") from exc


def _reject_known_binary(raw: bytes) -> None:
    for magic, kind in _MAGIC_NUMBERS:
        if raw.startswith(magic):
            raise IngestError(f"binary content ({kind}), not text")


def _utf16_without_bom(raw: bytes) -> tuple[str, str] | None:
    """UTF-16 text of mostly ASCII or Latin letters has a NUL in every other byte."""
    sample = raw[:4096]
    half = len(sample) // 2
    if len(raw) % 2 or half < 2:
        return None
    even_nuls, odd_nuls = sample[0 : 2 * half : 2].count(0), sample[1 : 2 * half : 2].count(0)
    if odd_nuls >= 0.1 * half and even_nuls <= 0.01 * half:
        encoding = "utf-16-le"
    elif even_nuls >= 0.1 * half and odd_nuls <= 0.01 * half:
        encoding = "utf-16-be"
    else:
        return None
    try:
        return raw.decode(encoding), encoding
    except UnicodeDecodeError:
        return None


def _reject_binary(raw: bytes) -> None:
    controls = len(raw) - len(raw.translate(None, _CONTROL_BYTES))
    if controls > _MAX_STRAY_CONTROLS and controls > _MAX_CONTROL_RATIO * len(raw):
        raise IngestError("binary content, not text")


def _reject_unlikely_text(text: str) -> None:
    """Catch binary data that still decoded (after a chance BOM, or as a legacy code page)."""
    sample = text[:_SAMPLE_CHARS]
    odd = sum(1 for char in sample if _is_unlikely_char(char))
    if odd > _MAX_STRAY_CONTROLS and odd > _MAX_CONTROL_RATIO * len(sample):
        raise IngestError("binary content, not text")


def _is_unlikely_char(char: str) -> bool:
    if char in "\t\n\v\f\r" or char.isprintable():
        return False
    # Unassigned, private-use, surrogate, control, or the replacement character.
    return char == "\ufffd" or unicodedata.category(char) in ("Cn", "Co", "Cs", "Cc")


def declared_charset(raw: bytes) -> str | None:
    """The charset an HTML page declares in its first 4 KB (<meta charset=...>)."""
    match = re.search(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w.:-]+)""", raw[:4096], re.I)
    return match.group(1).decode("ascii") if match else None


# ------------------------------------------------------------- legacy 8-bit encodings

# Accented letters of the Western European languages (Latin-1 and cp1252). A cp1250
# or mac-roman misreading of Norwegian gives letters outside it ("sřndag" for "søndag").
_COMMON_ACCENTED = frozenset("àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœšžÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝŒŠŽŸ")
_LETTER_RUN = re.compile(r"[^\W\d_]+")
# Tried before charset-normalizer's guess, which wins only if it reads strictly cleaner.
_USUAL_ENCODINGS = ("cp1252", "cp1251", "koi8_r")


def _decode_legacy(raw: bytes) -> tuple[str, str]:
    """The cleanest of cp1252, cp1251, koi8-r and charset-normalizer's best guess.

    charset-normalizer is reliable on a paragraph or more; on a line or two it may pick
    a code page no one uses ("Økonomisk" read as cp775 gives "žkonomisk"). The corpus'
    8-bit files are Russian (cp1251, koi8-r) or German/Norwegian (cp1252, which reads
    Latin-1 text the same), so those are preferred, scored by _mojibake_score. Trade-off:
    Central European 8-bit files (cp1250) may come out as cp1252.
    """
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    guessed = [best.encoding] if best else []
    candidates = dict.fromkeys([*_USUAL_ENCODINGS, *guessed, "latin-1"])
    decodings: list[tuple[int, int, str, str]] = []
    for order, encoding in enumerate(candidates):
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
        decodings.append((_mojibake_score(text[:_SAMPLE_CHARS]), order, text, encoding))
    if not decodings:
        raise IngestError("unknown text encoding")
    _, _, text, encoding = min(decodings)
    return text, encoding


def _mojibake_score(text: str) -> int:
    """Words that look like a wrong code page, plus symbols and controls that do.

    The corpus is written in Latin or Cyrillic script, so letters of any other script in
    an 8-bit file count as a misreading too.
    """
    score = sum(1 for char in text if _is_mojibake_symbol(char))
    for word in _LETTER_RUN.findall(text):
        if not word.isascii():
            score += _is_mojibake_word(word)
    return score


def _is_mojibake_symbol(char: str) -> bool:
    if char.isascii() or char in "©®°№§±×€£•–—…«»„“”‘’·":
        return False
    return unicodedata.category(char) in ("So", "Sk", "Co", "Cn", "Cc")


def _is_mojibake_word(word: str) -> bool:
    cyrillic = sum(1 for char in word if "\u0400" <= char <= "\u04ff")
    if cyrillic:
        # Mixed scripts, or inverted case as in cp1251 read as koi8-r ("пРИВЕТ").
        return cyrillic < len(word) or any(
            a.islower() and b.isupper() for a, b in zip(word, word[1:], strict=False)
        )
    accented = [char for char in word if not char.isascii()]
    if any(char not in _COMMON_ACCENTED for char in accented):
        return True
    # Latin words are mostly ASCII; Cyrillic read as cp1252 is not ("Ïðèâåò").
    return len(word) >= 3 and len(accented) * 3 >= len(word) * 2
