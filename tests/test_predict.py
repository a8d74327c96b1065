"""Inference: preprocessing geometry, un-letterboxing, batching and the predict CLI."""
import json

import cv2
import numpy as np
import pytest
import torch

from cl_detect import create_detector, save_official_checkpoint
from cl_detect.cli import main
from cl_detect.data.preprocess import LetterboxInfo, letterbox
from cl_detect.engine._box_ops import make_priors
from cl_detect.models.predict import postprocess
from _compiler import needs_cpp_compiler


def _confident(detector):
    """A fresh head starts with a 5-objects prior (scores far below 0.001); zero it so there is output."""
    for contrast in detector.head.cls_contrasts:
        contrast.bias.data.zero_()
    return detector


def test_letterbox_geometry_follows_the_official_pipeline():
    image = np.zeros((100, 200, 3), np.uint8)
    padded, info = letterbox(image, 640)
    assert padded.shape == (640, 640, 3)
    assert info.scale == (3.2, 3.2) and (info.pad_top, info.pad_left) == (160, 0)
    assert (padded[:160] == 114).all() and (padded[480:] == 114).all() and (padded[160:480] == 0).all()
    # odd padding: top gets pad // 2
    _, info = letterbox(np.zeros((101, 200, 3), np.uint8), 640)
    assert info.pad_top == (640 - int(101 * 3.2)) // 2


@pytest.mark.parametrize("height, width, resized", [
    (667, 1000, (426, 640)),  # 426.88: mmyolo's YOLOv5KeepRatioResize truncates (427 when rounded)
    (1000, 667, (640, 426)),
    (300, 199, (640, 424)),  # enlarged: 424.53 -> 424
])
def test_keep_ratio_resize_truncates_as_the_official_pipeline(height, width, resized):
    from cl_detect.data.preprocess import keep_ratio_resize

    image, scale = keep_ratio_resize(np.zeros((height, width, 3), np.uint8), 640)
    assert image.shape[:2] == resized and scale == (resized[1] / width, resized[0] / height)
    padded, info = letterbox(np.zeros((height, width, 3), np.uint8), 640)
    assert (info.pad_top, info.pad_left) == ((640 - resized[0]) // 2, (640 - resized[1]) // 2)


def test_letterbox_keeps_a_row_of_an_extreme_panorama_instead_of_crashing():
    # 1 x 1500 at 640 rounds to 0 rows (1 * 640 / 1500 + 0.5 < 1); cv2.resize refused that
    padded, info = letterbox(np.full((1, 1500, 3), 7, np.uint8), 640)
    assert padded.shape == (640, 640, 3) and (padded == 7).sum(axis=(1, 2)).nonzero()[0].tolist() == [319]
    assert info.scale == (640 / 1500, 1.0) and (info.pad_top, info.pad_left) == (319, 0)
    torch.manual_seed(0)
    detector = _confident(create_detector("yolo_world_v2_t", text_dim=16))
    det = detector.predict(np.zeros((3000, 2, 3), np.uint8), torch.randn(2, 16), image_size=64)[0]
    assert len(det) and det.boxes[:, 0::2].max() <= 2 and det.boxes[:, 1::2].max() <= 3000


def test_priors_are_cell_centres_row_major():
    points, strides = make_priors([(2, 3), (1, 1)], (8, 16))
    assert points[:4].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12]]
    assert points[-1].tolist() == [8, 8] and strides.flatten().tolist() == [8] * 6 + [16]


def test_postprocess_maps_boxes_back_and_keeps_per_class_duplicates():
    # two priors predicting the same box with two classes: class-aware NMS keeps both
    logits = [torch.full((1, 2, 1, 2), -10.0)]
    logits[0][0, 0, 0, 0] = 5.0
    logits[0][0, 1, 0, 0] = 4.0
    boxes = [torch.zeros(1, 4, 1, 2)]
    boxes[0][0, :, 0, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0])  # 16 px each side at stride 16
    info = LetterboxInfo(scale=(0.5, 0.5), pad_top=4, pad_left=0, original_hw=(100, 100))
    det = postprocess(logits, boxes, (16,), [info])[0]
    assert det.labels[:2].tolist() == [0, 1]
    expected = torch.tensor([(8 - 16) / 0.5, (8 - 16 - 4) / 0.5, (8 + 16) / 0.5, (8 + 16 - 4) / 0.5])
    expected = torch.stack([expected[0].clamp(0, 100), expected[1].clamp(0, 100), expected[2], expected[3]])
    torch.testing.assert_close(det.boxes[0], expected)
    assert det.scores[0] == torch.sigmoid(torch.tensor(5.0))


def _one_image_reference(logits, boxes, info, score_thr, nms_pre, iou_thr, max_per_img):
    """The official procedure for one image, written out step by step: threshold, sort, cut, NMS."""
    from torchvision.ops import batched_nms
    scores = logits.sigmoid()
    anchor_idx, labels = (scores > score_thr).nonzero(as_tuple=True)
    candidate_scores = scores[anchor_idx, labels]
    order = candidate_scores.argsort(descending=True)[:nms_pre]
    candidate_scores, anchor_idx, labels = candidate_scores[order], anchor_idx[order], labels[order]
    candidate_boxes = info.unmap_boxes(boxes[anchor_idx])
    kept = batched_nms(candidate_boxes, candidate_scores, labels, iou_thr)[:max_per_img]
    height, width = info.original_hw
    final = candidate_boxes[kept]
    final[:, 0::2], final[:, 1::2] = final[:, 0::2].clamp(0, width), final[:, 1::2].clamp(0, height)
    return final, candidate_scores[kept], labels[kept]


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("score_thr, nms_pre", [(0.001, 30000), (0.3, 30000), (0.001, 50), (0.999, 30000)])
def test_postprocess_gives_each_images_own_official_detections(score_thr, nms_pre, batched):
    from cl_detect.models.predict import flatten_outputs
    generator = torch.Generator().manual_seed(0)
    shapes, strides, classes = [(8, 8), (4, 4)], (8, 16), 5
    count = 3 * classes * sum(h * w for h, w in shapes)  # distinct logits: no ties to order
    values = torch.linspace(-8, 4, count)[torch.randperm(count, generator=generator)].split(
        [3 * classes * h * w for h, w in shapes])
    logits = [v.reshape(3, classes, h, w) for v, (h, w) in zip(values, shapes)]
    boxes = [torch.rand(3, 4, h, w, generator=generator) * 3 for h, w in shapes]
    infos = [LetterboxInfo((0.5, 0.5), 16, 0, (32, 128)), LetterboxInfo((1.0, 1.0), 0, 0, (64, 64)),
             LetterboxInfo((2.0, 1.6), 0, 8, (30, 24))]
    detections = postprocess(logits, boxes, strides, infos, score_thr, nms_pre, 0.7, 40, batched=batched)
    flat_logits, flat_boxes = flatten_outputs(logits, boxes, strides)
    for i, (det, info) in enumerate(zip(detections, infos)):
        expected = _one_image_reference(flat_logits[i], flat_boxes[i], info, score_thr, nms_pre, 0.7, 40)
        for got, want in zip((det.boxes, det.scores, det.labels), expected):
            assert torch.equal(got, want), f"image {i}"
        assert len(det) <= 40 and (det.scores > score_thr).all()
    if score_thr == 0.999:  # nothing passes: empty detections, not an error
        assert all(len(det) == 0 for det in detections)


def test_predict_is_batch_invariant_and_within_bounds(tmp_path):
    torch.manual_seed(0)
    detector = _confident(create_detector("yolo_world_v2_t", text_dim=16))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (60, 90, 3), dtype=np.uint8), rng.integers(0, 255, (80, 40, 3), dtype=np.uint8)]
    text = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    together = detector.predict(images, text, image_size=64, batch_size=2)
    alone = [detector.predict(image, text, image_size=64)[0] for image in images]
    for a, b, image in zip(together, alone, images):
        torch.testing.assert_close(a.scores, b.scores)
        assert 0 < len(a) <= 300 and (a.scores[:-1] >= a.scores[1:]).all()
        assert a.boxes[:, 0::2].max() <= image.shape[1] and a.boxes[:, 1::2].max() <= image.shape[0]
        assert a.boxes.min() >= 0


def test_predict_takes_each_images_own_prompts_across_batches():
    """(B, N, D) prompts, one set per image, used to reach the head whole with a batch of
    fewer images and fail in einsum ('subscript b has size 3 ... size 2')."""
    torch.manual_seed(0)
    detector = _confident(create_detector("yolo_world_v2_t", text_dim=16))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (60, 90, 3), dtype=np.uint8) for _ in range(3)]
    text = torch.nn.functional.normalize(torch.randn(3, 4, 16), dim=-1)
    together = detector.predict(images, text, image_size=64, batch_size=2)
    for image, prompts, got in zip(images, text, together):
        alone = detector.predict(image, prompts, image_size=64)[0]
        torch.testing.assert_close(got.scores, alone.scores)
        assert torch.equal(got.labels, alone.labels)
    with pytest.raises(ValueError, match=r"text embeddings are \(2, 4, 16\) for 3 images.*B = 3"):
        detector.predict(images, text[:2], image_size=64)


@pytest.mark.slow
def test_predict_cli_draws_boxes(tmp_path, capsys):
    from cl_detect.models.text_encoders import create_text_encoder
    text_encoder = create_text_encoder("clip")  # random CLIP text tower: no download
    detector = _confident(create_detector("yolo_world_v2_t"))
    weights = tmp_path / "model.pth"
    save_official_checkpoint(detector, weights, text_encoder=text_encoder)
    image = tmp_path / "in.jpg"
    cv2.imwrite(str(image), np.full((48, 64, 3), 200, np.uint8))
    out = tmp_path / "vis.png"
    assert main(["predict", "--weights", str(weights), "--texts", "person,dog", str(image), "--out", str(out),
                 "--image-size", "64", "--score-thr", "0.0"]) == 0
    drawn = cv2.imread(str(out))
    assert drawn.shape == (48, 64, 3) and (drawn != 200).any()  # boxes were drawn
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["out"] == str(out) and row["detections"]
    assert {d["label"] for d in row["detections"]} <= {"person", "dog"}
    with pytest.raises(SystemExit, match="empty prompt"):
        main(["predict", "--weights", str(weights), "--texts", "person,,dog", str(image), "--out", str(out)])
    with pytest.raises(ValueError, match="multiple of 32.*got 500; the nearest are 480 and 512"):
        main(["predict", "--weights", str(weights), "--texts", "person", str(image), "--out", str(out),
              "--image-size", "500"])


@pytest.mark.slow
def test_predict_cli_reads_the_checkpoints_that_training_writes(tmp_path, capsys):
    from cl_detect.models.checkpoint import save_model
    detector = _confident(create_detector("yolo_world_v2_t", text_dim=384))
    weights = tmp_path / "finetuned.pt"
    save_model(weights, detector, "minilm-random")  # as finetune/pretrain write it
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.full((40, 56, 3), 90, np.uint8))
    out = tmp_path / "vis.png"
    assert main(["predict", "--weights", str(weights), "--texts", "fish,shark", str(image), "--out", str(out),
                 "--image-size", "64", "--score-thr", "0.0"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["detections"] and {d["label"] for d in row["detections"]} <= {"fish", "shark"}


def test_predict_cli_checks_the_image_size_before_loading_the_model(tmp_path):
    """A wrong --image-size was found only after the checkpoint had loaded (seconds for L/X)."""
    with pytest.raises(ValueError, match="multiple of 32.*got 500"):
        main(["predict", "--weights", str(tmp_path / "not_read.pt"), "--texts", "fish", str(tmp_path / "in.png"),
              "--out", str(tmp_path / "vis.png"), "--image-size", "500"])


@pytest.mark.slow
def test_predict_cli_uses_a_prompt_tuned_checkpoints_class_embeddings_without_padding(tmp_path, capsys):
    """Its embeddings hold exactly the tuned classes; the blank padding prompt the command appends
    made every run fail with 'holds 2 class embeddings, got 3 texts'."""
    from cl_detect.models.official import FixedTextEmbeddings
    detector = _confident(create_detector("yolo_world_v2_t"))
    weights = tmp_path / "prompt_tuned.pth"
    save_official_checkpoint(detector, weights, FixedTextEmbeddings(torch.randn(2, 512)))
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.full((40, 56, 3), 90, np.uint8))
    assert main(["predict", "--weights", str(weights), "--texts", "fish,shark", str(image), "--out",
                 str(tmp_path / "vis.png"), "--image-size", "64", "--score-thr", "0.0"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["detections"] and {d["label"] for d in row["detections"]} <= {"fish", "shark"}


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_predict_matches_eager_and_pads_the_last_batch_instead_of_recompiling():
    torch.manual_seed(0)
    detector = _confident(create_detector("yolo_world_v2_t", text_dim=16))
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (60 + 7 * i, 90 - 9 * i, 3), dtype=np.uint8) for i in range(3)]
    text = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    eager = detector.predict(images, text, image_size=64, batch_size=2)
    torch._dynamo.reset()
    # batches of 2 and 1: the second is padded to 2, so a recompile would be an error here
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = detector.predict(images, text, image_size=64, batch_size=2, compile=True)
    assert len(compiled) == len(images)
    for a, b in zip(eager, compiled):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.boxes, b.boxes, rtol=1e-4, atol=1e-3)
        assert torch.equal(a.labels[:20], b.labels[:20])


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_code_serves_other_weights_of_the_same_architecture_without_recompiling():
    """Later stages, sets and teachers compile nothing new: the weights are inputs of the compiled code,
    not constants baked into it, so another detector (or changed weights) gives its own outputs."""
    from cl_detect.models.fuse import compile_for_inference, fused_copy
    images, text = torch.rand(2, 3, 64, 64), torch.randn(1, 3, 16)
    detectors = [fused_copy(create_detector("yolo_world_v2_t", text_dim=16)) for _ in range(2)]
    torch._dynamo.reset()
    with torch.no_grad():
        first = compile_for_inference(detectors[0], 2)(images, text)
        with torch._dynamo.config.patch(error_on_recompile=True):
            second = detectors[1]
            for _ in range(2):
                got, expected = compile_for_inference(second, 2)(images, text), second(images, text)
                for a, b, other in zip(got.neck_feats, expected.neck_feats, first.neck_feats):
                    tolerance = 1e-4 * b.abs().max().item()
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=tolerance)
                    assert (other - b).abs().max() > 100 * tolerance  # the first detector's outputs differ
                for param in second.parameters():  # as a further task's training would change them
                    param.mul_(1.5).add_(0.01)


def test_draw_detections_leaves_out_the_blank_padding_class():
    from cl_detect.commands.predict import draw_detections
    from cl_detect.models.predict import Detections
    image = np.full((64, 64, 3), 200, np.uint8)
    # label 2 is the blank " " prompt appended after the user's two classes
    detections = Detections(torch.tensor([[4.0, 4, 20, 20], [36, 36, 60, 60]]), torch.tensor([0.9, 0.8]),
                            torch.tensor([2, 0]))
    canvas = draw_detections(image, detections, ["person", "dog"], 0.3)
    assert (canvas[:30, :30] == 200).all()  # the blank class's box is not drawn
    assert (canvas[30:, 30:] != 200).any()  # the person's is


def test_outputs_of_inputs_sharing_a_name_get_their_folder_name(tmp_path):
    from cl_detect.commands.predict import output_paths
    out = tmp_path / "vis"
    images = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), str(tmp_path / "a" / "y.jpg")]
    assert output_paths(str(out), images) == [out / "a_x_det.png", out / "b_x_det.png", out / "y_det.png"]
    with pytest.raises(SystemExit, match=r"would all be written as a_x_det.png; give them in separate runs"):
        output_paths(str(out), [str(tmp_path / "a" / "x.png"), str(tmp_path / "a" / "x.jpg")])


def test_out_for_one_image_is_a_file_with_an_image_extension_or_a_folder(tmp_path):
    from cl_detect.commands.predict import output_paths, write_image
    image = str(tmp_path / "in" / "x.jpg")
    assert output_paths(str(tmp_path / "vis.PNG"), [image]) == [tmp_path / "vis.PNG"]
    (tmp_path / "existing").mkdir()
    assert output_paths(str(tmp_path / "existing"), [image]) == [tmp_path / "existing" / "x_det.png"]
    assert output_paths(str(tmp_path / "new") + "/", [image]) == [tmp_path / "new" / "x_det.png"]
    with pytest.raises(SystemExit, match=r"'.*vis' is neither an image file \(.png, .jpg"):
        output_paths(str(tmp_path / "vis"), [image])
    with pytest.raises(SystemExit, match="is an image file name, but 2 images were given; give a folder"):
        output_paths(str(tmp_path / "vis.png"), [image, str(tmp_path / "y.jpg")])
    with pytest.raises(SystemExit, match="neither an image file"):  # refused before the weights are read
        main(["predict", "--weights", str(tmp_path / "model.pt"), "--texts", "person", image,
              "--out", str(tmp_path / "existing" / "vis")])
    (tmp_path / "taken_det.png").mkdir()  # cv2.imwrite returns False rather than raising here
    with pytest.raises(SystemExit, match="could not write .*taken_det.png"):
        write_image(tmp_path / "taken_det.png", np.zeros((8, 8, 3), np.uint8))


def test_out_never_writes_over_an_input_image(tmp_path):
    """`--out photo.png photo.png` replaced the photo by its drawing; so did `--out vis x.png vis/x_det.png`
    (x.png's drawing went over the second input, which was then read again to draw on)."""
    from cl_detect.commands.predict import output_paths
    photo = tmp_path / "photo.png"
    with pytest.raises(SystemExit, match=r"write over the input image .*photo.png"):
        output_paths(str(tmp_path / "." / "photo.png"), [str(photo)])
    (tmp_path / "vis").mkdir()
    with pytest.raises(SystemExit, match=r"write over the input image .*x_det.png"):
        output_paths(str(tmp_path / "vis"), [str(tmp_path / "x.png"), str(tmp_path / "vis" / "x_det.png")])


def test_texts_naming_a_file_are_read_from_it(tmp_path):
    from cl_detect.commands.predict import parse_texts
    lines = tmp_path / "prompts.txt"
    lines.write_text("\ufeffperson\n\n  red car, parked \ndog\n", encoding="utf-8")  # a BOM, as Windows writes
    assert parse_texts(str(lines)) == ["person", "red car, parked", "dog"]
    listed = tmp_path / "prompts.json"
    listed.write_text(json.dumps(["person", ["dog", "puppy"]]))
    assert parse_texts(str(listed)) == ["person", "dog"]
    assert parse_texts("person, dog") == ["person", "dog"]
    with pytest.raises(SystemExit, match="looks like a prompt file but there is no such file"):
        parse_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SystemExit, match="has no prompts"):
        parse_texts(str(tmp_path / "empty.txt"))


def test_predict_refuses_float_and_16_bit_arrays_saying_how_to_convert():
    detector = create_detector("yolo_world_v2_t", text_dim=16)
    image = np.random.default_rng(0).integers(0, 255, (8, 10, 3), dtype=np.uint8)
    text = torch.randn(2, 16)
    # a float array was fed unscaled (every score 1.0); a uint16 one failed deep inside torch
    with pytest.raises(ValueError, match=r"uint8 \(0-255\) BGR, got float32 .*\(image \* 255\)\.clip\(0, 255\)"):
        detector.predict(image.astype(np.float32) / 255, text, image_size=64)
    with pytest.raises(ValueError, match=r"got uint16 .*\(image // 257\)\.astype\(np.uint8\)"):
        detector.predict(image.astype(np.uint16) * 257, text, image_size=64)


def test_predict_takes_gray_and_bgra_arrays_as_reading_their_files_would():
    from cl_detect.models.predict import _as_bgr
    bgr = np.random.default_rng(0).integers(0, 255, (8, 10, 3), dtype=np.uint8)
    assert _as_bgr(bgr) is bgr
    assert np.array_equal(_as_bgr(np.dstack([bgr, np.full((8, 10), 7, np.uint8)])), bgr)  # alpha dropped
    gray = bgr[:, :, 0]
    assert np.array_equal(_as_bgr(gray), np.dstack([gray] * 3))
    assert np.array_equal(_as_bgr(gray[:, :, None]), np.dstack([gray] * 3))
    with pytest.raises(ValueError, match="got shape \\(8, 10, 2\\)"):
        _as_bgr(bgr[:, :, :2])


@pytest.mark.slow
def test_predict_cli_reads_prompt_files_and_keeps_outputs_of_same_named_inputs_apart(tmp_path, capsys, monkeypatch):
    from cl_detect.commands import predict as predict_command
    from cl_detect.models.checkpoint import save_model
    weights = tmp_path / "finetuned.pt"
    save_model(weights, _confident(create_detector("yolo_world_v2_t", text_dim=384)), "minilm-random")
    for folder, value in (("a", 90), ("b", 160)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), np.full((40, 56, 3), value, np.uint8))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("fish\nshark, big\n")
    drawn_names = []
    draw = predict_command.draw_detections
    monkeypatch.setattr(predict_command, "draw_detections",
                        lambda image, dets, names, thr: drawn_names.append(names) or draw(image, dets, names, thr))
    out = tmp_path / "vis"
    assert main(["predict", "--weights", str(weights), "--texts", str(prompts), str(tmp_path / "a" / "x.png"),
                 str(tmp_path / "b" / "x.png"), "--out", str(out), "--image-size", "64", "--score-thr", "0.0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert [row["out"] for row in rows] == [str(out / "a_x_det.png"), str(out / "b_x_det.png")]
    assert cv2.imread(rows[0]["out"]).shape == cv2.imread(rows[1]["out"]).shape == (40, 56, 3)
    assert {d["label"] for row in rows for d in row["detections"]} <= {"fish", "shark, big"}
    assert drawn_names == [["fish", "shark, big"]] * 2  # the blank padding prompt is not drawn
    # one image into an existing folder
    assert main(["predict", "--weights", str(weights), "--texts", "fish", str(tmp_path / "a" / "x.png"),
                 "--out", str(out), "--image-size", "64"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["out"] == str(out / "x_det.png")
    assert cv2.imread(str(out / "x_det.png")) is not None


@pytest.mark.slow
def test_predict_cli_decodes_one_batch_of_images_at_a_time(tmp_path, capsys, monkeypatch):
    """It decoded every input before predicting: 36 MB per 12-megapixel photo, all held at once
    (2.4 GB peak for 40 photos)."""
    import importlib
    import weakref

    from cl_detect.data import preprocess
    from cl_detect.models.checkpoint import save_model
    predict_module = importlib.import_module("cl_detect.models.predict")  # the package exports a function of that name
    weights = tmp_path / "model.pt"
    save_model(weights, _confident(create_detector("yolo_world_v2_t", text_dim=384)), "minilm-random")
    paths = []
    for i in range(20):  # more than predict's batch of 16
        paths.append(str(tmp_path / f"in{i}.png"))
        cv2.imwrite(paths[-1], np.full((40, 56, 3), 10 * i, np.uint8))
    decoded, most_alive = [], []
    read = preprocess.load_image_bgr

    def counting_read(path):
        image = read(path)
        decoded.append(weakref.ref(image))
        most_alive.append(sum(ref() is not None for ref in decoded))
        return image

    monkeypatch.setattr(preprocess, "load_image_bgr", counting_read)
    monkeypatch.setattr(predict_module, "load_image_bgr", counting_read)
    assert main(["predict", "--weights", str(weights), "--texts", "fish", *paths, "--out", str(tmp_path / "vis"),
                 "--image-size", "64"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 20
    assert max(most_alive) <= 16 + 1
    assert all(cv2.imread(str(tmp_path / "vis" / f"in{i}_det.png")) is not None for i in range(20))


def test_predict_takes_float64_prompts_and_detectors_and_refuses_settings_that_drop_detections():
    """float64 embeddings (torch.from_numpy) failed in the neck with 'mat1 and mat2 must have the same
    dtype', and a .double() detector on its float32 images; max_per_img=-1 silently dropped the last detection and batch_size=0 failed in range()."""
    torch.manual_seed(0)
    detector = _confident(create_detector("yolo_world_v2_t", text_dim=16))
    image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    text = torch.randn(3, 16)
    expected = detector.predict(image, text, image_size=64)[0]
    for prompts in (text.double(), text.double().numpy()):  # torch.from_numpy of a .npy, or the array itself
        got = detector.predict(image, prompts, image_size=64)[0]
        assert torch.equal(got.boxes, expected.boxes) and torch.equal(got.scores, expected.scores)
    in_float64 = create_detector("yolo_world_v2_t", text_dim=16).double()  # the images were fed as float32
    in_float64.load_state_dict(detector.state_dict())
    got = in_float64.predict(image, text, image_size=64)[0]
    torch.testing.assert_close(got.scores, expected.scores)
    for setting, shown in (({"max_per_img": -1}, "max_per_img=-1"), ({"batch_size": 0}, "batch_size=0"),
                           ({"nms_pre": 0}, "nms_pre=0"), ({"score_thr": 30}, "score_thr=30"),
                           ({"iou_thr": -0.1}, "iou_thr=-0.1")):
        with pytest.raises(ValueError, match=f"settings out of range: {shown} .*official ones"):
            detector.predict(image, text, image_size=64, **setting)
    with pytest.raises(ValueError, match=r"shape \(0, 5, 3\) holds no pixels"):
        detector.predict(np.zeros((0, 5, 3), np.uint8), text, image_size=64)


def test_predict_cli_refuses_a_score_threshold_outside_0_1(capsys):
    """--score-thr 30 (a percentage) drew and printed nothing, without a word."""
    from cl_detect.cli import build_parser
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["predict", "--weights", "w.pt", "--texts", "a", "x.png", "--out", "v.png",
                                   "--score-thr", "30"])
    assert stop.value.code == 2 and "--score-thr: 30.0 is not a score in [0, 1]" in capsys.readouterr().err


def test_predict_cli_checks_the_device_before_loading_the_model(tmp_path, monkeypatch):
    """--device cuda on a machine without one, or --device gpu, failed inside torch after the model loaded."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    argv = ["predict", "--weights", str(tmp_path / "not_read.pt"), "--texts", "fish", str(tmp_path / "in.png"),
            "--out", str(tmp_path / "vis.png")]
    with pytest.raises(ValueError, match=r"--device is 'cuda', but this machine has 0 CUDA device"):
        main([*argv, "--device", "cuda"])
    with pytest.raises(ValueError, match=r"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        main([*argv, "--device", "gpu"])


def test_predict_cli_checks_the_inputs_before_loading_the_model(tmp_path):
    """A mistyped input, a folder or a text file was found only when its batch was read, after the model
    had loaded and the batches before it had been computed."""
    argv = ["predict", "--weights", str(tmp_path / "not_read.pt"), "--texts", "fish",
            "--out", str(tmp_path / "vis.png")]
    with pytest.raises(SystemExit, match=r"input image .*typo.png does not exist"):
        main([*argv, str(tmp_path / "typo.png")])
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit, match=r"input .*photos is a folder; give its image files, e.g. .*photos/\*.jpg"):
        main([*argv, str(tmp_path / "photos")])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(SystemExit, match=r"input .*notes.jpg is not an image OpenCV can read"):
        main([*argv, str(tmp_path / "notes.jpg")])


def test_compiling_on_a_cpu_without_a_cpp_compiler_says_how_to_fix_it(monkeypatch):
    """The first batch failed deep in torch._dynamo (InductorError), a traceback from `cl-detect`."""
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    def no_compiler():
        raise InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    detector = create_detector("yolo_world_v2_t", text_dim=16)
    with pytest.raises(ValueError, match=r"needs a C\+\+ compiler.*build-essential.*without compile"):
        detector.predict(np.zeros((8, 10, 3), np.uint8), torch.randn(2, 16), image_size=64, compile=True)
