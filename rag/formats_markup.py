"""Readers of the formats that wrap HTML: EPUB books and e-mail messages (.eml).

The chapters of an EPUB and the HTML body of a mail go through rag.ingest's HTML
extractor (handed in as `html`), so they are cleaned like any web page. Every line is
located on its chapter or on the mail's subject. Bad files raise IngestError with a
one-line reason.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ElementTree
import zipfile
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import unquote

from rag.decoding import declared_charset, decode_text
from rag.formats import HtmlReader, corrupt, open_zip
from rag.locations import Extracted, Lines, short_label
from rag.records import IngestError, Location

# ------------------------------------------------------------------------------- EPUB


def read_epub(raw: bytes, html: HtmlReader) -> Extracted:
    """The chapters in reading order, each line located on its chapter's title."""
    with open_zip(raw, ".epub") as archive:
        try:
            book = _Book(archive)
            located = Lines()
            for number, (path, chapter) in enumerate(book.chapters(html), start=1):
                title = book.titles.get(path) or _first_heading(chapter) or f"chapter {number}"
                where = Location(section=short_label(title), label=short_label(title))
                located.add(chapter.text, where)
        except IngestError:
            raise
        except Exception as exc:  # zipfile and XML errors alike
            raise corrupt(".epub", exc) from exc
    if not located.has_text():
        raise IngestError("EPUB has no text")
    return located.extracted(title=book.title)


class _Book:
    """An EPUB's package: its reading order (spine), chapter titles and book title."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        package_path = self._package_path()
        self.folder = posixpath.dirname(package_path)
        package = self._xml(package_path)
        self.title = (
            " ".join("".join(package.find(".//{*}title").itertext()).split())
            if (package.find(".//{*}title") is not None)
            else ""
        )
        items = {
            item.get("id"): item
            for item in package.iterfind("{*}manifest/{*}item")
            if item.get("id")
        }
        spine = package.find("{*}spine")
        if spine is None:
            raise IngestError("corrupt .epub file (its package has no reading order)")
        self.spine = [
            self._path(items[ref.get("idref")].get("href", ""))
            for ref in spine.iterfind("{*}itemref")
            if ref.get("idref") in items
        ]
        self.titles = self._toc_titles(items, spine.get("toc"))

    def chapters(self, html: HtmlReader) -> Iterator[tuple[str, Extracted]]:
        """(path, extracted text) of each spine document that has text."""
        encrypted = self._encrypted()
        for path in dict.fromkeys(self.spine):
            if path in encrypted:
                raise IngestError("DRM-protected EPUB (its chapters are encrypted)")
            markup = self.archive.read(path)
            try:
                yield path, html(decode_text(markup, declared=declared_charset(markup))[0])
            except IngestError:
                continue  # a cover or a page of images: no text, not a broken book

    def _package_path(self) -> str:
        try:
            container = self._xml("META-INF/container.xml")
        except KeyError as exc:
            raise IngestError("corrupt .epub file (no META-INF/container.xml)") from exc
        rootfile = container.find(".//{*}rootfile")
        if rootfile is None or not rootfile.get("full-path"):
            raise IngestError("corrupt .epub file (its container names no package)")
        return str(rootfile.get("full-path"))

    def _xml(self, path: str) -> ElementTree.Element:
        # expat refuses external entities and (since 2.4.1) entity expansion bombs
        return ElementTree.fromstring(self.archive.read(path))

    def _path(self, href: str) -> str:
        """The archive path of a manifest href (relative to the package, URL-quoted)."""
        return posixpath.normpath(posixpath.join(self.folder, unquote(href.split("#")[0])))

    def _encrypted(self) -> set[str]:
        try:
            encryption = self._xml("META-INF/encryption.xml")
        except KeyError:
            return set()
        # fonts are often "obfuscated" this way too: only encrypted chapters matter
        return {
            posixpath.normpath(unquote(str(ref.get("URI"))))
            for ref in encryption.iterfind(".//{*}CipherReference")
        }

    def _toc_titles(self, items: dict[Any, Any], ncx_id: str | None) -> dict[str, str]:
        """Chapter path -> its title in the table of contents (EPUB 3 nav, else NCX)."""
        nav = next(
            (i for i in items.values() if "nav" in (i.get("properties") or "").split()), None
        )
        try:
            if nav is not None:
                return self._nav_titles(self._path(nav.get("href", "")))
            if ncx_id in items:
                return self._ncx_titles(self._path(items[ncx_id].get("href", "")))
        except (KeyError, ElementTree.ParseError):
            pass  # a broken table of contents: chapters are named by their headings
        return {}

    def _nav_titles(self, path: str) -> dict[str, str]:
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(self.archive.read(path), "lxml")
        toc = soup.find("nav", attrs={"epub:type": "toc"}) or soup.find("nav")
        titles: dict[str, str] = {}
        base = posixpath.dirname(path)
        for link in toc.find_all("a", href=True) if toc is not None else []:
            target = posixpath.normpath(posixpath.join(base, unquote(link["href"].split("#")[0])))
            titles.setdefault(target, " ".join(link.get_text().split()))
        return {path: title for path, title in titles.items() if title}

    def _ncx_titles(self, path: str) -> dict[str, str]:
        titles: dict[str, str] = {}
        base = posixpath.dirname(path)
        for point in self._xml(path).iterfind(".//{*}navPoint"):
            label, content = point.find("{*}navLabel/{*}text"), point.find("{*}content")
            if label is None or content is None or not content.get("src"):
                continue
            src = str(content.get("src")).split("#")[0]
            target = posixpath.normpath(posixpath.join(base, unquote(src)))
            titles.setdefault(target, " ".join("".join(label.itertext()).split()))
        return {path: title for path, title in titles.items() if title}


def _first_heading(chapter: Extracted) -> str:
    return next((where.section for where in chapter.locations if where.section), "")


# ------------------------------------------------------------------------------ e-mail

_ADDRESS_HEADERS = ("From", "To", "Cc", "Date")
_ENCRYPTED_TYPES = ("multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime")


def read_eml(raw: bytes, html: HtmlReader) -> Extracted:
    """Subject, sender, recipients, date and the text body (plain, else HTML); every
    line is located on the subject."""
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
        subject = short_label(str(message.get("Subject") or ""))
        headers = [f"{name}: {message[name]}" for name in _ADDRESS_HEADERS if message[name]]
    except Exception as exc:  # malformed headers the parser could not recover from
        raise corrupt(".eml", exc) from exc
    if not subject and not headers:
        raise IngestError("not an e-mail message (no Subject, From, To or Date header)")
    if message.get_content_type() in _ENCRYPTED_TYPES:
        raise IngestError("encrypted e-mail (S/MIME or PGP)")
    body = _body_text(message, html)
    if not body.strip():
        raise IngestError("e-mail has no text body (only attachments?)")
    where = Location(section=subject or None, label=f"e-mail: {subject or '(no subject)'}")
    located = Lines()
    for line in [f"Subject: {subject}" if subject else "", *headers, "", body]:
        located.add(line, where)
    return located.extracted(title=subject)


def _body_text(message: EmailMessage, html: HtmlReader) -> str:
    """The plain-text body, else the HTML one as text ("" for none)."""
    try:
        part = message.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        content = _part_text(part)
    except Exception as exc:  # a damaged MIME structure or transfer encoding
        raise corrupt(".eml", exc) from exc
    if part.get_content_type() == "text/html":
        try:
            return html(content).text
        except IngestError:
            return ""
    return content


def _part_text(part: Any) -> str:
    """A text part decoded by its charset; an unknown charset is detected instead."""
    try:
        return str(part.get_content())
    except LookupError:  # a charset Python does not know
        payload = part.get_payload(decode=True) or b""
        return decode_text(payload)[0]
