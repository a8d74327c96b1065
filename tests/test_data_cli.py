"""`cl-detect data ...` through `cl_detect.cli.main`: convert round trips, check exit codes, pack."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _data_builders import assert_same_records, tiny_coco_images, tiny_coco_json, write_grounding_json, write_odvg
from PIL import Image

from cl_detect.cli import build_parser, main
from cl_detect.data.readers import read_dataset
from cl_detect.data.errors import DatasetFormatError
from cl_detect.data.records import DetectionDataset

AQUARIUM = "aquarium/dataset/aquarium_pretrain"


@pytest.mark.parametrize("src, fmt, split", [
    ("tiny_coco", "coco", "val"), (AQUARIUM, "yolo", "valid"), ("raccoon", "voc", None),
    ("pothole/data/raw/data.yaml", "yolo", "test")])
def test_convert_round_trip(shared_data, tmp_path, capsys, src, fmt, split):
    out = tmp_path / "out" / "converted.json"
    argv = ["data", "convert", str(shared_data / src), "--format", fmt, "--out", str(out)]
    assert main(argv + (["--split", split] if split else [])) == 0
    original = read_dataset(shared_data / src, format=fmt, split=split)
    assert f"images {len(original)}, boxes {original.num_boxes}" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert [c["id"] for c in written["categories"]] == list(range(1, len(original.vocabulary) + 1))
    assert not Path(written["images"][0]["file_name"]).is_absolute()
    assert_same_records(original, read_dataset(out))


def test_convert_keeps_crowd_as_iscrowd(shared_data, tmp_path):
    out = tmp_path / "val.json"
    main(["data", "convert", str(tiny_coco_json(shared_data)), "--format", "coco", "--out", str(out)])
    written = json.loads(out.read_text())
    crowd = [a for a in written["annotations"] if a["iscrowd"]]
    assert len(crowd) == 5 and len(written["annotations"]) == 382
    assert all(a["area"] > 0 for a in written["annotations"])


def test_convert_lvis_remaps_federated_ids(shared_data, tmp_path):
    src = shared_data / "lvis_val_100/data/lvis_val_100.json"
    out = tmp_path / "lvis.json"
    assert main(["data", "convert", str(src), "--format", "lvis", "--out", str(out)]) == 0
    original, back = read_dataset(src), read_dataset(out)
    assert Counter(back.vocabulary.frequency) == Counter(original.vocabulary.frequency) == {"f": 315, "c": 461,
                                                                                             "r": 454}
    assert back.vocabulary.synonyms == original.vocabulary.synonyms
    assert_same_records(original, back)
    new_id = {cid: i + 1 for i, cid in enumerate(original.vocabulary.category_ids)}
    for a, b in zip(original.records, back.records):
        assert [new_id[c] for c in a.neg_category_ids] == list(b.neg_category_ids)
        assert [new_id[c] for c in a.not_exhaustive_category_ids] == list(b.not_exhaustive_category_ids)


@pytest.mark.parametrize("kind", ["grounding", "odvg"])
def test_convert_grounding_round_trip(shared_data, tmp_path, kind):
    if kind == "grounding":
        src = write_grounding_json(shared_data, tmp_path / "goldg.json")
    else:
        src = write_odvg(shared_data, tmp_path / "val.odvg.jsonl", grounding=True)
    out = tmp_path / "out.json"
    root = str(tiny_coco_images(shared_data))
    assert main(["data", "convert", str(src), "--format", kind, "--image-root", root, "--out", str(out)]) == 0
    original, back = read_dataset(src, image_root=root), read_dataset(out)
    assert json.loads(out.read_text())["info"]["image_root"] and back.records[0].is_grounding
    assert_same_records(original, back)


def test_check_exit_codes(shared_data, tmp_path, capsys):
    assert main(["data", "check", str(shared_data / "raccoon")]) == 0
    assert "OK: 0 errors" in capsys.readouterr().out
    texts = tmp_path / "texts.txt"
    texts.write_text("raccoon\nperson\n")
    assert main(["data", "check", str(shared_data / "raccoon"), "--texts", str(texts), "--no-images"]) == 1
    assert "[text_prompt_mismatch]" in capsys.readouterr().out


def test_pack_scales_boxes_and_images(shared_data, tmp_path, capsys):
    out = tmp_path / "packed"
    argv = ["data", "pack", str(shared_data / "tiny_coco"), "--split", "val", "--max-side", "256",
            "--limit", "6", "--out", str(out), "--quality", "80"]
    assert main(argv) == 0
    assert "images 6" in capsys.readouterr().out
    original = read_dataset(shared_data / "tiny_coco", split="val")
    packed = read_dataset(out / "annotations.json")
    assert isinstance(packed, DetectionDataset) and len(packed) == 6
    for before, after in zip(original.records[:6], packed.records):
        with Image.open(after.image_path) as image:
            assert image.size == (after.width, after.height) and image.format == "JPEG"
        assert max(after.width, after.height) == 256
        scale = np.array([after.width / before.width, after.height / before.height] * 2)
        np.testing.assert_allclose(after.boxes, before.boxes * scale, atol=1e-2)
        np.testing.assert_allclose(after.ignore_boxes, before.ignore_boxes * scale, atol=1e-2)
        np.testing.assert_array_equal(after.labels, before.labels)
        assert Path(after.image_path).is_relative_to(out / "images")
    assert main(["data", "check", str(out / "annotations.json")]) == 0


def test_pack_does_not_enlarge(shared_data, tmp_path):
    out = tmp_path / "packed"
    assert main(["data", "pack", str(shared_data / "raccoon"), "--max-side", "4000", "--limit", "3",
                 "--out", str(out)]) == 0
    original, packed = read_dataset(shared_data / "raccoon"), read_dataset(out / "annotations.json")
    assert [(r.width, r.height) for r in packed.records] == [(r.width, r.height) for r in original.records[:3]]


def test_pack_refuses_sizes_limits_and_qualities_that_would_silently_drop_data(tmp_path):
    from cl_detect.data.records import DetectionRecord, Vocabulary
    from cl_detect.data.writers import write_coco_json
    Image.new("RGB", (60, 20)).save(tmp_path / "wide.png")
    record = DetectionRecord(image_path=str(tmp_path / "wide.png"), image_id=1, width=60, height=20,
                             boxes=np.array([[6.0, 2.0, 30.0, 18.0]], np.float32), labels=np.zeros(1, np.int64))
    src = write_coco_json(DetectionDataset([record], Vocabulary(("bar",)), image_root=str(tmp_path)),
                          tmp_path / "ann.json", tmp_path)
    out = tmp_path / "packed"
    # --max-side 0 once packed every image as 1 x 1, --limit -1 left out the last image
    for args, message in [(["--max-side", "0"], "max-side.*got 0"), (["--max-side", "-5"], "max-side.*got -5"),
                          (["--limit", "-1"], "limit.*got -1"), (["--quality", "150"], "quality.*0 to 100")]:
        with pytest.raises(ValueError, match=message):
            main(["data", "pack", str(src), *args, "--out", str(out)])
        assert not out.exists()
    assert main(["data", "pack", str(src), "--max-side", "30", "--out", str(out)]) == 0
    packed = read_dataset(out / "annotations.json").records[0]
    assert (packed.width, packed.height) == (30, 10)
    np.testing.assert_allclose(packed.boxes, [[3.0, 1.0, 15.0, 9.0]])


def test_pack_refuses_a_label_outside_the_classes_before_writing_any_image(tmp_path):
    from cl_detect.data.pack import pack_dataset
    from cl_detect.data.records import DetectionRecord, Vocabulary
    Image.new("RGB", (60, 20)).save(tmp_path / "wide.png")
    records = [DetectionRecord(image_path=str(tmp_path / "wide.png"), image_id=i, width=60, height=20,
                               boxes=np.array([[6.0, 2.0, 30.0, 18.0]], np.float32), labels=np.array([label]))
               for i, label in ((1, 0), (2, 3))]
    with pytest.raises(DatasetFormatError, match="label 3 is outside the 1"):
        pack_dataset(DetectionDataset(records, Vocabulary(("bar",))), tmp_path / "packed")
    assert not (tmp_path / "packed").exists()  # a folder of packed images used to be left behind


def test_synth_subcommand_registered():
    data_parser = build_parser()._subparsers._group_actions[0].choices["data"]
    subcommands = data_parser._subparsers._group_actions[0].choices
    assert {"convert", "check", "pack", "synth"} <= set(subcommands)


def test_convert_help_does_not_promise_a_guessed_format(capsys):
    """convert requires --format; its help said 'default: guessed from the file' as check's does."""
    for command, guessed in (("convert", False), ("check", True)):
        with pytest.raises(SystemExit):
            main(["data", command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert ("guessed from the file" in text) == guessed


def test_image_root_with_a_guessed_yolo_or_voc_format_is_not_passed_to_their_readers(shared_data, tmp_path, capsys):
    """--image-root reads json sources only; without --format a yaml or VOC folder raised a bare TypeError."""
    yolo = shared_data / AQUARIUM / "data.yaml"
    assert main(["data", "check", str(yolo), "--split", "valid", "--no-images", "--image-root", str(tmp_path)]) == 0
    assert "OK: 0 errors" in capsys.readouterr().out
    out = tmp_path / "raccoon.json"
    assert main(["data", "convert", str(shared_data / "raccoon"), "--format", "voc", "--out", str(out),
                 "--image-root", str(shared_data / "raccoon")]) == 0
    assert_same_records(read_dataset(out), read_dataset(shared_data / "raccoon"))
