"""The dataset doctor: real data passes; each planted fault gives its specific finding code."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _data_builders import load, tiny_coco_images, tiny_coco_json

from cl_detect.data.doctor import DoctorReport, check_dataset, check_texts, load_texts
from cl_detect.data.errors import DatasetError
from cl_detect.data.readers import read_dataset
from cl_detect.data.records import DetectionDataset, DetectionRecord, Vocabulary


@pytest.mark.parametrize("src, kwargs", [
    ("raccoon", {}), ("tiny_coco", {}), ("coco128_yolo", {}), ("aquarium/dataset/aquarium_pretrain", {}),
    ("pothole/data/raw/data.yaml", {}), ("lvis_val_100/data/lvis_val_100.json", {"check_images": False})])
def test_real_datasets_have_no_errors(shared_data, src, kwargs):
    report = check_dataset(shared_data / src, **kwargs)
    assert report.ok, report.format_text()
    assert report.num_images > 0 and report.num_boxes > 0


def test_real_data_warnings_are_the_known_ones(shared_data):
    # coco128: 2 label files without images; aquarium: 2 zero-size boxes in its test split
    assert {f.code for f in check_dataset(shared_data / "coco128_yolo").warnings} == {"orphan_label_file",
                                                                                      "unused_class"}
    aquarium = check_dataset(shared_data / "aquarium/dataset/aquarium_pretrain", split="test", check_images=False)
    assert [f.code for f in aquarium.warnings] == ["zero_area_box", "zero_area_box"]


def _coco_copy(shared_data: Path, tmp_path: Path, edit, n_images: int = 4, copy_images: bool = False) -> Path:
    """First n tiny_coco val images in a new json (edited by `edit(data)`); images symlinked or copied."""
    data = load(tiny_coco_json(shared_data))
    data["images"] = data["images"][:n_images]
    ids = {image["id"] for image in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    image_dir = tmp_path / "val2017"
    image_dir.mkdir()
    for image in data["images"]:
        source = tiny_coco_images(shared_data) / image["file_name"]
        if copy_images:
            shutil.copy(source, image_dir / image["file_name"])
        else:
            (image_dir / image["file_name"]).symlink_to(source)
    edit(data)
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(data))
    return path


def _codes(report, severity: str = "error") -> set[str]:
    return {f.code for f in report.findings if f.severity == severity}


def test_clean_copy_passes(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path, lambda data: None))
    assert _codes(report) == set()


def test_text_prompt_count_mismatch(shared_data, tmp_path):
    texts = tmp_path / "prompts.txt"
    texts.write_text("raccoon\ndog\n")
    report = check_dataset(shared_data / "raccoon", texts=texts, check_images=False)
    assert _codes(report) == {"text_prompt_mismatch"}
    assert "2 prompts" in report.errors[0].message and str(texts) in report.errors[0].message


def test_text_prompt_names_mismatch_and_order(shared_data):
    names = list(read_dataset(shared_data / "aquarium/dataset/aquarium_pretrain", split="test").vocabulary.names)
    swapped = [names[1], names[0], *names[2:]]
    report = check_dataset(shared_data / "aquarium/dataset/aquarium_pretrain", split="test", texts=swapped,
                           check_images=False)
    assert _codes(report) == {"text_prompt_mismatch"} and "different order" in report.errors[0].message
    fine = check_dataset(shared_data / "aquarium/dataset/aquarium_pretrain", split="test",
                         texts=[[n.upper()] for n in names], check_images=False)
    assert fine.ok


def test_vocabulary_read_letter_by_letter(shared_data):
    dataset = read_dataset(shared_data / "raccoon")
    broken = DetectionDataset(dataset.records, Vocabulary(tuple("head")), source="config.py")
    report = check_dataset(broken, check_images=False)
    assert "names_as_string" in _codes(report)
    assert "['head']" in next(f.fix for f in report.errors if f.code == "names_as_string")


def test_yaml_names_single_string(shared_data, tmp_path):
    (tmp_path / "valid/images").mkdir(parents=True)
    (tmp_path / "valid/labels").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text("val: valid/images\nnc: 1\nnames: head\n")
    report = check_dataset(tmp_path / "data.yaml", split="val")
    assert _codes(report) == {"names_as_string"} and "data.yaml" in report.errors[0].message


def test_texts_read_letter_by_letter(shared_data):
    report = check_dataset(shared_data / "raccoon", texts=list("raccoon"), check_images=False)
    assert "names_as_string" in _codes(report)


def _xywh_to_xyxy(data: dict) -> None:
    for annotation in data["annotations"]:
        x, y, w, h = annotation["bbox"]
        annotation["bbox"] = [x, y, x + w, y + h]  # a COCO file that wrongly holds xyxy


def test_xyxy_read_as_xywh(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path, _xywh_to_xyxy, n_images=10), check_images=False)
    assert "boxes_look_like_xyxy" in _codes(report)
    assert "box_outside_image" not in _codes(report)  # reported once as a pattern, not per box


def test_xywh_read_as_xyxy(shared_data, tmp_path):
    # ODVG boxes are xyxy; this file was written with COCO's xywh
    data = load(tiny_coco_json(shared_data))
    images = {image["id"]: image for image in data["images"][:10]}
    lines = []
    for image_id, image in images.items():
        boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        lines.append(json.dumps({"filename": image["file_name"], "width": image["width"], "height": image["height"],
                                 "detection": {"instances": [{"bbox": b, "label": 0, "category": "thing"}
                                                             for b in boxes]}}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines))
    report = check_dataset(tmp_path / "train.jsonl", image_root=tiny_coco_images(shared_data))
    assert _codes(report) == {"boxes_look_like_xywh"}


def _edit_first_box(data: dict, bbox: list[float]) -> None:
    first = next(a for a in data["annotations"] if not a["iscrowd"])
    first["bbox"] = bbox


def test_box_outside_image(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path, lambda d: _edit_first_box(d, [900, 20, 50, 50])))
    assert _codes(report) == {"box_outside_image"} and "entirely outside" in report.errors[0].message


def test_zero_area_box(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path, lambda d: _edit_first_box(d, [10, 20, 0, 30])))
    assert _codes(report) == {"zero_area_box"}  # 1 of ~30 boxes: above the 1 % share, an error


def test_single_inverted_box(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path, lambda d: _edit_first_box(d, [100, 20, -40, 30])))
    assert _codes(report) == {"inverted_box"}


def test_category_id_out_of_range(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path,
                                      lambda d: d["annotations"][0].update(category_id=999)))
    assert _codes(report) == {"label_out_of_range"} and "not in the categories" in report.errors[0].message


def test_yolo_class_index_out_of_range(shared_data, tmp_path):
    (tmp_path / "valid/images").mkdir(parents=True)
    (tmp_path / "valid/labels").mkdir(parents=True)
    source = shared_data / "aquarium/dataset/aquarium_pretrain/valid/images"
    image = sorted(source.iterdir())[0]
    (tmp_path / "valid/images" / image.name).symlink_to(image)
    (tmp_path / "valid/labels" / (image.stem + ".txt")).write_text("0 0.5 0.5 0.2 0.2\n7 0.3 0.3 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text("val: valid/images\nnames: [fish, jellyfish, penguin, puffin, shark, "
                                        "starfish, stingray]\n")
    report = check_dataset(tmp_path / "data.yaml")
    assert _codes(report) == {"label_out_of_range"} and "only 7 classes" in report.errors[0].message


def test_duplicated_class_names_and_unused_classes(shared_data, tmp_path):
    def rename(data):
        data["categories"][1]["name"] = data["categories"][0]["name"]

    report = check_dataset(_coco_copy(shared_data, tmp_path, rename))
    assert _codes(report) == {"duplicate_class_name"}
    assert "unused_class" in _codes(report, "warning")


def test_missing_image(shared_data, tmp_path):
    path = _coco_copy(shared_data, tmp_path, lambda d: None)
    victim = sorted((tmp_path / "val2017").iterdir())[0]
    victim.unlink()
    report = check_dataset(path)
    assert _codes(report) == {"image_missing"} and victim.name in report.errors[0].message


def test_unreadable_image(shared_data, tmp_path):
    path = _coco_copy(shared_data, tmp_path, lambda d: None, copy_images=True)
    victim = sorted((tmp_path / "val2017").iterdir())[0]
    victim.write_bytes(b"<html>404 not found</html>")
    assert _codes(check_dataset(path)) == {"image_unreadable"}


def test_truncated_image(shared_data, tmp_path):
    path = _coco_copy(shared_data, tmp_path, lambda d: None, copy_images=True)
    victim = sorted((tmp_path / "val2017").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    report = check_dataset(path)
    assert _codes(report) == {"image_truncated"} and victim.name in report.errors[0].message


def test_image_size_differs_from_annotation(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path, lambda d: d["images"][0].update(width=1280)))
    assert "image_size_mismatch" in _codes(report)
    assert "annotated as 1280x" in next(f.message for f in report.errors if f.code == "image_size_mismatch")


def test_empty_dataset_and_no_boxes(shared_data, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    assert _codes(check_dataset(empty)) == {"empty_dataset"}
    report = check_dataset(_coco_copy(shared_data, tmp_path, lambda d: d.update(annotations=[])))
    assert _codes(report) == {"no_boxes"}


def test_orphan_label_file_warning(shared_data, tmp_path):
    report = check_dataset(shared_data / "coco128_yolo", check_images=False)
    orphans = [f for f in report.warnings if f.code == "orphan_label_file"]
    assert sorted(Path(f.message.split(":")[0]).name for f in orphans) == ["000000000656.txt", "000000000659.txt"]


def test_report_text_and_raise_on_errors(shared_data, tmp_path):
    report = check_dataset(_coco_copy(shared_data, tmp_path, lambda d: _edit_first_box(d, [900, 20, 50, 50])))
    text = report.format_text()
    assert "[box_outside_image]" in text and "fix:" in text and text.rstrip().endswith("FAILED: 1 errors, 1 warnings")
    with pytest.raises(DatasetError, match="box_outside_image"):
        report.raise_on_errors()
    check_dataset(shared_data / "raccoon", check_images=False).raise_on_errors()  # no errors: no raise


def test_many_findings_are_summarised(shared_data):
    dataset = read_dataset(shared_data / "raccoon")
    for record in dataset.records[:20]:
        record.boxes = record.boxes + np.float32(5000)
    report = check_dataset(dataset, check_images=False)
    assert len([f for f in report.errors if f.code == "box_outside_image"]) == 20
    assert "... and 17 more like this" in report.format_text(max_per_code=3)


def test_png_images_verify_cleanly(tmp_path):
    """Pillow refuses verify() after EXIF was read from a PNG; the doctor must not report it unreadable."""
    import cv2
    import numpy as np

    from cl_detect.data._doctor_images import inspect_image
    path = tmp_path / "ok.png"
    cv2.imwrite(str(path), np.zeros((8, 12, 3), np.uint8))
    assert inspect_image(path) == (None, "", (12, 8), (12, 8))
    path.write_bytes(path.read_bytes()[:-20])
    assert inspect_image(path)[0] in ("image_truncated", "image_unreadable")


def _write_coco(tmp_path: Path, images: list[dict]) -> Path:
    """A COCO json for the given image entries, one 'red box' per image."""
    annotations = [{"id": i + 1, "image_id": image["id"], "category_id": 1, "bbox": [2, 2, 20, 10], "area": 200,
                    "iscrowd": 0} for i, image in enumerate(images)]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "red box"}]}))
    return path


@pytest.mark.parametrize("ids, code", [([1, 1], "duplicate_image_id"), (["img1", "img2"], "invalid_image_id")])
def test_bad_image_ids_are_findings(tmp_path, ids, code):
    images = [{"id": image_id, "file_name": f"img{i}.png", "width": 64, "height": 64} for i, image_id in enumerate(ids)]
    report = check_dataset(_write_coco(tmp_path, images), check_images=False)
    assert _codes(report) == {code} and "annotations.json" in report.errors[0].message


def _noise_image(path: Path, width: int, height: int, orientation: int = 1) -> None:
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8))
    exif = image.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


@pytest.mark.parametrize("annotated, code", [
    ((120, 60), "image_exif_transposed"), ((60, 120), None), ((100, 50), "image_size_mismatch")])
def test_exif_rotated_image_must_be_annotated_as_displayed(tmp_path, annotated, code):
    """Stored 120x60 with orientation 6: cv2 (training) loads it as 60x120, so only 60x120 is right."""
    import cv2

    _noise_image(tmp_path / "rot.jpg", 120, 60, orientation=6)
    assert cv2.imread(str(tmp_path / "rot.jpg")).shape[:2] == (120, 60)  # (H, W): the displayed frame
    width, height = annotated
    report = check_dataset(_write_coco(tmp_path, [{"id": 1, "file_name": "rot.jpg", "width": width,
                                                   "height": height}]))
    assert _codes(report) == ({code} if code else set())
    if code == "image_exif_transposed":
        assert "rot.jpg" in report.errors[0].message and "EXIF orientation" in report.errors[0].message
        assert "without the EXIF orientation tag" in report.errors[0].fix


@pytest.mark.parametrize("kind", ["float", "rotated"])
def test_tiffs_that_opencv_cannot_decode_are_unreadable(tmp_path, kind):
    """Pillow reads these; cv2.imread (training, evaluation, predict) returns None for them."""
    from PIL import Image

    path = tmp_path / "scan.tiff"
    if kind == "float":
        Image.fromarray(np.zeros((60, 120), np.float32)).save(path)
    else:
        _noise_image(path, 120, 60, orientation=6)
    report = check_dataset(_write_coco(tmp_path, [{"id": 1, "file_name": path.name, "width": 120, "height": 60}]))
    unreadable = [f for f in report.errors if f.code == "image_unreadable"]
    assert len(unreadable) == 1 and "scan.tiff" in unreadable[0].message and "OpenCV" in unreadable[0].message
    _noise_image(tmp_path / "plain.tiff", 120, 60)  # an ordinary TIFF stays fine
    assert check_dataset(_write_coco(tmp_path, [{"id": 1, "file_name": "plain.tiff", "width": 120,
                                                 "height": 60}])).ok


@pytest.mark.parametrize("suffix", [".tiff", ".jpg", ".png"])
def test_rotated_sizes_are_read_the_same_from_every_format(tmp_path, suffix):
    """Pillow's TIFF reader reports the displayed size of an EXIF-rotated image, the others the stored one."""
    from cl_detect.data._doctor_images import inspect_image
    from cl_detect.data.readers._common import image_size

    path = tmp_path / f"rotated{suffix}"
    _noise_image(path, 120, 60, orientation=6)  # stored 120 x 60, displayed 60 x 120
    check = inspect_image(path)
    assert (check.stored, check.displayed, image_size(path)) == ((120, 60), (60, 120), (60, 120))


@pytest.mark.parametrize("source", ["xmp", "png_text_profile"])
def test_orientation_that_opencv_ignores_does_not_rotate_the_size(tmp_path, source):
    """Pillow also reads an orientation from XMP and from a PNG's 'Raw profile type exif' text
    (ImageMagick's); cv2.imread (training) ignores both, so the image is loaded as stored."""
    import cv2
    from PIL import Image, PngImagePlugin

    from cl_detect.data.readers._common import image_size
    raw = Image.Exif()
    raw[0x0112] = 6
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    text = PngImagePlugin.PngInfo()
    if source == "xmp":
        text.add_itxt("XML:com.adobe.xmp", xmp)
    else:
        text.add_text("Raw profile type exif", f"\nexif\n{len(raw.tobytes()):8d}\n{raw.tobytes().hex()}\n", zip=True)
    Image.new("RGB", (120, 60)).save(tmp_path / "photo.png", pnginfo=text)
    with Image.open(tmp_path / "photo.png") as image:
        assert image.getexif()[0x0112] == 6  # Pillow's reading
    assert cv2.imread(str(tmp_path / "photo.png")).shape[:2] == (60, 120)  # what training loads
    assert image_size(tmp_path / "photo.png") == (120, 60)  # what the YOLO and VOC readers record
    for (width, height), codes in (((120, 60), set()), ((60, 120), {"image_size_mismatch"})):
        report = check_dataset(_write_coco(tmp_path, [{"id": 1, "file_name": "photo.png", "width": width,
                                                       "height": height}]))
        assert _codes(report) == codes


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_png_and_jpeg_are_image_truncated(tmp_path, suffix):
    """Pillow says 'Truncated File Read' (capital T) for these; that is image_truncated, not unreadable."""
    from PIL import Image

    path = tmp_path / f"t{suffix}"
    Image.new("RGB", (96, 96), (200, 30, 30)).save(path)  # flat: half the JPEG ends inside its headers
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = check_dataset(_write_coco(tmp_path, [{"id": 1, "file_name": path.name, "width": 96, "height": 96}]))
    assert _codes(report) == {"image_truncated"}


def test_jpeg_with_data_after_its_end_marker_is_complete(tmp_path):
    """A phone's motion photo appends a video after the JPEG's FF D9; a cut JPEG whose comment holds
    FF D9 bytes is still truncated (the search starts at the scan data)."""
    from PIL import Image

    from cl_detect.data._doctor_images import inspect_image
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8))
    noise.save(tmp_path / "full.jpg", comment=b"\xff\xd9" * 8)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "motion.jpg").write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert inspect_image(tmp_path / "motion.jpg").problem is None
    assert inspect_image(tmp_path / "cut.jpg").problem == "image_truncated"


@pytest.mark.parametrize("suffix", [".ico", ".tga"])
def test_formats_opencv_has_no_decoder_for_are_unreadable(tmp_path, suffix):
    """Pillow opens ICO and TGA; cv2.imread (training, evaluation, predict) cannot."""
    from cl_detect.data._doctor_images import inspect_image

    _noise_image(tmp_path / f"x{suffix}", 32, 32)
    check = inspect_image(tmp_path / f"x{suffix}")
    assert check.problem == "image_unreadable" and "OpenCV" in check.detail


def test_pillows_decompression_bomb_limit_gives_way_to_opencvs(tmp_path, monkeypatch):
    """An aerial image over Pillow's limit (179 M pixels) that OpenCV reads (up to 2**30) is fine;
    over OpenCV's limit it is unreadable. Both limits are shrunk here to keep the image small."""
    from PIL import Image

    from cl_detect.data._doctor_images import inspect_image
    from cl_detect.data.readers import _common
    _noise_image(tmp_path / "aerial.png", 60, 40)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2000 pixels
    assert inspect_image(tmp_path / "aerial.png").problem is None
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored for the user's own Pillow calls
    monkeypatch.setattr(_common, "OPENCV_MAX_PIXELS", 2000)
    assert inspect_image(tmp_path / "aerial.png").problem == "image_unreadable"


def test_prompt_files_with_byte_order_mark(tmp_path):
    """Windows editors start UTF-8 files with a BOM; it must not become part of the first prompt."""
    from cl_detect.methods.distill.method import read_vocabulary_file

    texts = tmp_path / "prompts.txt"
    texts.write_text("\ufeffred box\nblue circle\n", encoding="utf-8")
    dataset = DetectionDataset([], Vocabulary(("red box", "blue circle")), source="x.json")
    report = DoctorReport("x.json")
    check_texts(dataset.vocabulary, texts, dataset.source, report.add)
    assert report.findings == []
    assert read_vocabulary_file(texts) == ["red box", "blue circle"]
    json_texts = tmp_path / "prompts.json"
    json_texts.write_text('\ufeff["red box", "blue circle"]', encoding="utf-8")
    assert load_texts(json_texts) == [["red box"], ["blue circle"]]


def test_yaml_names_yes_no_is_a_finding(tmp_path):
    (tmp_path / "train/images").mkdir(parents=True)
    (tmp_path / "train/labels").mkdir(parents=True)
    (tmp_path / "data.yaml").write_text("train: train/images\nnames: [yes, no]\n")
    report = check_dataset(tmp_path / "data.yaml", split="train")
    assert _codes(report) == {"non_string_class_name"} and "data.yaml" in report.errors[0].message


def test_an_image_listed_twice_is_an_error(tmp_path):
    """Two entries for one file split its boxes: each copy trains the other's objects as background."""
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.zeros((48, 64, 3), np.uint8))
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 3, "file_name": "b.jpg", "width": 64, "height": 48}]
    annotations = [{"id": n, "image_id": n, "category_id": 1, "bbox": [5 * n, 5, 10, 10]} for n in (1, 2, 3)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "fish"}]}))
    report = check_dataset(path)
    assert _codes(report) == {"repeated_image"}
    assert "a.jpg is listed 2 times (image ids 1, 2)" in report.errors[0].message


def test_identical_copies_of_an_image_are_a_warning(tmp_path):
    path = tmp_path / "a.png"
    records = [DetectionRecord(str(path), 64, 48, [[5, 5, 20, 20]], [0], image_id=i) for i in (1, 2)]
    report = check_dataset(DetectionDataset(records, Vocabulary(("fish",)), source="two copies"), check_images=False)
    assert report.ok and "repeated_image" in _codes(report, "warning")


def test_overlapping_pixel_limit_uses_in_threads_restore_pillows_limit():
    import threading

    from PIL import Image

    from cl_detect.data.readers._common import opencv_pixel_limit
    before = Image.MAX_IMAGE_PIXELS
    entered, release = threading.Barrier(2), threading.Event()

    def hold():
        with opencv_pixel_limit():
            entered.wait()
            release.wait()

    first = threading.Thread(target=hold)
    first.start()
    with opencv_pixel_limit():
        entered.wait()
        release.set()
        first.join()
    assert Image.MAX_IMAGE_PIXELS == before
