"""Explanations: phrase extraction, and maps that are faithful (masking what they rank highest costs
more similarity than masking random patches) and that localise (shirt above trousers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ivt
from ivt.cli import main
from ivt.data import load_dataset
from ivt.errors import DataError
from ivt.explain import content_phrases, explain, explain_png, faithfulness, render, similarity_without
from ivt.index.query import encode_query
from search_helpers import tiny_trained_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run, data = tiny_trained_run(tmp_path_factory.getbasetemp())
    return ivt.load(run, device="cpu", precision="fp32"), run, data


def test_content_phrases():
    assert content_phrases("A man in a black jacket with a red backpack.") == ["man", "black jacket", "red backpack"]
    assert content_phrases("The woman is wearing a white dress and carrying a bag, and a bag") == [
        "woman", "white dress", "bag"]
    assert content_phrases("a person in a red shirt, with blue trousers.") == ["red shirt", "blue trousers"]
    assert content_phrases("with and the") == []
    assert len(content_phrases(" ".join(f"w{i} and" for i in range(20)))) == 6


def test_subset_encoding_with_nothing_dropped_is_the_normal_encoding(trained):
    model, _, data = trained
    image = next((data / "imgs" / "test").iterdir())
    full = similarity_without(model, image, ["a person in a red shirt"], [[]])
    assert float(full[0, 0]) == pytest.approx(float(model.similarity(["a person in a red shirt"], [image])), abs=1e-5)


def test_maps_are_faithful_and_localise_the_garments(trained):
    model, _, data = trained
    dataset = load_dataset(data)
    gaps, above = [], []
    for record in dataset.split("test")[::2]:                           # one image of each test person
        image = dataset.image_path(record)
        caption = record.captions[0]                                   # "a person in a X shirt, with Y trousers."
        result = explain(model, image, caption, samples=64, seed=0)
        assert [m.phrase for m in result.maps][1:] == content_phrases(caption) and len(result.maps) == 3
        assert result.maps[0].relevance.shape == tuple(model.config.grid_size) == (7, 3)
        for check in faithfulness(model, image, result, fraction=0.25, draws=16):
            assert check.without_top < check.full                      # the top patches matter
            gaps.append(check.gap)
        rows = np.arange(7)[:, None]
        shirt, trousers = (np.clip(m.relevance, 0, None) for m in result.maps[1:])
        above.append((shirt * rows).sum() / shirt.sum() < (trousers * rows).sum() / trousers.sum())
    gaps = np.array(gaps)
    # Masking the top-ranked quarter lowers the similarity more than masking a random quarter,
    # for every text of every image, by a clear margin on average.
    assert (gaps > 0).all(), gaps
    assert gaps.mean() > 0.03, gaps.mean()
    assert all(above), above                                           # "X shirt" sits above "Y trousers"


def test_render_and_cli(trained, tmp_path, capsys):
    model, run, data = trained
    image = sorted((data / "imgs" / "test").iterdir())[0]
    result, png = explain_png(model, image, "a person in a red shirt", tmp_path / "e.png", samples=16)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "e.png").read_bytes() == png
    picture = render(result, height=128)
    assert picture.height > 128 and picture.width > 3 * 64    # the image and two maps, 64 px wide each
    with Image.open(tmp_path / "e.png") as img:
        assert img.size == render(result).size
    assert main(["explain", "--checkpoint", str(run), "--image", str(image), "a man with a black backpack",
                 "--out", str(tmp_path / "cli.png"), "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "'black backpack': cos" in out and (tmp_path / "cli.png").stat().st_size > 1000
    assert main(["explain", "--checkpoint", str(run), "--image", str(tmp_path / "missing.png"), "a man",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_explaining_is_deterministic(trained):
    model, _, data = trained
    image = sorted((data / "imgs" / "test").iterdir())[1]
    a = explain(model, image, "a red shirt", samples=8, seed=3)
    b = explain(model, image, "a red shirt", samples=8, seed=3)
    assert all(torch.equal(torch.from_numpy(x.relevance), torch.from_numpy(y.relevance))
               for x, y in zip(a.maps, b.maps))


def test_a_text_of_no_known_word_is_refused_as_search_refuses_it(trained):
    model, _, data = trained
    image = sorted((data / "imgs" / "test").iterdir())[0]
    message = ("none of the words of the description were seen in training (zebrastriped, quokka); describe the "
               "person's clothes, colours and what they carry")
    with pytest.raises(DataError) as exc:
        explain(model, image, "zebrastriped quokka", samples=8)
    assert str(exc.value) == message
    with pytest.raises(DataError) as exc:
        encode_query(model, "zebrastriped quokka")
    assert str(exc.value) == message
    assert len(explain(model, image, "a zebrastriped shirt", samples=8).maps) == 2    # a known word suffices
