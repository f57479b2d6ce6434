"""Every PNG faceage writes says it is synthetic: IPTC DigitalSourceType in XMP and PNG text chunks, read back."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

from faceage import __version__
from faceage.provenance import (
    IPTC_EXT_NS,
    TRAINED_ALGORITHMIC_MEDIA,
    XMP_KEY,
    Provenance,
    png_bytes,
    read_provenance,
    save_png,
)


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8))


def test_png_carries_iptc_source_type_and_text_chunks(tmp_path):
    image = _image()
    path = tmp_path / "aged.png"
    save_png(image, path, Provenance(model="default (bundled)", target="70", group="70+"))
    meta = read_provenance(path)
    assert meta["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert meta["Software"] == f"faceage {__version__}"
    assert meta["faceage:model"] == "default (bundled)"
    assert meta["faceage:target_age"] == "70"
    assert meta["faceage:age_group"] == "70+"
    assert "Synthetic image" in meta["Description"] and "70+" in meta["Description"]
    with Image.open(path) as back:
        assert back.format == "PNG"
        np.testing.assert_array_equal(np.asarray(back), np.asarray(image))  # the label changes no pixel


def test_xmp_packet_is_well_formed_rdf():
    data = png_bytes(_image(), Provenance(model="mine", target="5, 20, 40"))
    with Image.open(io.BytesIO(data)) as image:
        packet = image.text[XMP_KEY]
    assert packet.startswith("<?xpacket begin=") and packet.endswith('<?xpacket end="w"?>')
    root = ET.fromstring(packet[packet.index("<x:xmpmeta") : packet.rindex("</x:xmpmeta>") + len("</x:xmpmeta>")])
    values = [d.attrib.get(f"{{{IPTC_EXT_NS}}}DigitalSourceType") for d in root.iter()]
    assert TRAINED_ALGORITHMIC_MEDIA in values


def test_awkward_model_names_survive_the_round_trip():
    name = 'runs/ünïcode <&> "quoted" model.pt'
    meta = read_provenance(png_bytes(_image(1), Provenance(model=name, target="50-69")))
    assert meta["faceage:model"] == name
    assert name in meta["Description"]  # plain text in the chunk; escaped only inside the XMP packet
    assert meta["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert "faceage:age_group" not in meta  # no group given, none written


def test_a_plain_png_has_no_provenance(tmp_path):
    path = tmp_path / "plain.png"
    _image().save(path)
    assert read_provenance(path) == {}
