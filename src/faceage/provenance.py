"""Provenance for every image faceage writes: it says, in the file, that the image is synthetic.

An aged photo is a real photo whose faces a trained model replaced, so each PNG carries two machine-readable
labels that travel with the file:

* an XMP packet (PNG ``iTXt`` chunk ``XML:com.adobe.xmp``) with IPTC ``Iptc4xmpExt:DigitalSourceType`` =
  ``trainedAlgorithmicMedia``, the vocabulary that photo tools and content-credential checkers read;
* PNG text chunks naming faceage and its version (``Software``), the model and the target age, and a
  sentence saying what was done (``Description``).

``save_png`` writes them, ``png_bytes`` returns the encoded file, and ``read_provenance`` reads them back.
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.sax.saxutils import escape, quoteattr

from PIL import Image, PngImagePlugin

from faceage import __version__

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_KEY = "XML:com.adobe.xmp"  # the PNG iTXt keyword the XMP specification reserves for a packet
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
DC_NS = "http://purl.org/dc/elements/1.1/"
# PNG text keywords; "Software" and "Description" are PNG's registered ones, the rest are faceage's.
MODEL_KEY = "faceage:model"
TARGET_KEY = "faceage:target_age"
GROUP_KEY = "faceage:age_group"
SOURCE_TYPE_KEY = "faceage:digital_source_type"


@dataclass(frozen=True)
class Provenance:
    """What made a synthetic image: the model and the target age as asked (``"70"``, ``"50-69"``, ``"5, 20"``)."""

    model: str
    target: str
    group: str | None = None  # the model's age group the target mapped to, when there is one

    @property
    def software(self) -> str:
        return f"faceage {__version__}"

    @property
    def description(self) -> str:
        group = f" (age group {self.group})" if self.group and self.group != self.target else ""
        return f"Synthetic image: faces aged to {self.target}{group} by {self.software}, model {self.model}."

    def text_chunks(self) -> dict[str, str]:
        chunks = {"Software": self.software, "Description": self.description, MODEL_KEY: self.model}
        chunks[TARGET_KEY] = self.target
        if self.group:
            chunks[GROUP_KEY] = self.group
        chunks[SOURCE_TYPE_KEY] = TRAINED_ALGORITHMIC_MEDIA
        return chunks

    def xmp(self) -> str:
        """An XMP packet carrying the IPTC digital source type, the creator tool and the description."""
        return (
            '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            f' <rdf:RDF xmlns:rdf="{RDF_NS}">\n'
            '  <rdf:Description rdf:about=""\n'
            f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NS}" xmlns:xmp="{XMP_NS}" xmlns:dc="{DC_NS}"\n'
            f'    Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}"\n'
            f"    xmp:CreatorTool={quoteattr(self.software)}>\n"
            f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(self.description)}</rdf:li>'
            "</rdf:Alt></dc:description>\n"
            "  </rdf:Description>\n"
            " </rdf:RDF>\n"
            "</x:xmpmeta>\n"
            '<?xpacket end="w"?>'
        )


def png_info(provenance: Provenance) -> PngImagePlugin.PngInfo:
    """PNG chunks for ``provenance``: the XMP packet and the text chunks, all as uncompressed UTF-8 ``iTXt``."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(XMP_KEY, provenance.xmp())
    for key, value in provenance.text_chunks().items():
        info.add_itxt(key, value)
    return info


def save_png(image: Image.Image, dest: str | os.PathLike | BinaryIO, provenance: Provenance) -> None:
    """Write ``image`` as a PNG that carries ``provenance`` to a path or a binary file object."""
    image.save(dest, format="PNG", pnginfo=png_info(provenance))


def png_bytes(image: Image.Image, provenance: Provenance) -> bytes:
    """``image`` encoded as a PNG that carries ``provenance``."""
    buffer = io.BytesIO()
    save_png(image, buffer, provenance)
    return buffer.getvalue()


def read_provenance(source: str | os.PathLike | bytes | BinaryIO) -> dict[str, str]:
    """The text chunks of a PNG plus ``digital_source_type`` read from its XMP packet (absent keys: not there)."""
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        source = Path(source)
    with Image.open(source) as image:
        text = {k: str(v) for k, v in getattr(image, "text", {}).items()}
    xmp = text.pop(XMP_KEY, None)
    if xmp is not None:
        source_type = _xmp_source_type(xmp)
        if source_type:
            text["digital_source_type"] = source_type
    return text


def _xmp_source_type(packet: str) -> str | None:
    start, end = packet.find("<x:xmpmeta"), packet.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        return None
    root = ET.fromstring(packet[start : end + len("</x:xmpmeta>")])
    attribute = f"{{{IPTC_EXT_NS}}}DigitalSourceType"
    for description in root.iter(f"{{{RDF_NS}}}Description"):
        if attribute in description.attrib:
            return description.attrib[attribute]
        element = description.find(attribute)
        if element is not None and element.text:
            return element.text.strip()
    return None
