"""`image-analyzer run` with S3 source and output, against moto server mode and the fake OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fakeopenai import FakeOpenAIServer
from tests.helpers import invoke, jpeg_bytes
from tests.s3support import FixtureBucket

KEY = "sk-test-s3-run-0000"


def _fill(bucket: FixtureBucket) -> None:
    layout = {"0012/kitchen": 12, "0012/bedroom": 2, "77/exterior": 1}
    seed = 0
    for folder, count in layout.items():
        for n in range(count):
            bucket.put(f"incoming/{folder}/photo {n}.jpg", jpeg_bytes(seed))
            seed += 1
    bucket.put("incoming/0012/notes.txt", b"not a photo")


def _args(bucket: FixtureBucket, server: FakeOpenAIServer, *extra: str) -> list[str]:
    return [
        "run", "--all-properties", "--bucket", bucket.name, "--prefix", "incoming",
        "--endpoint-url", bucket.endpoint, "--base-url", server.base_url, "--api-key", KEY, "--json", *extra,
    ]  # fmt: skip


def test_s3_source_does_the_same_job_as_local_folders(
    workdir: Path, moto_bucket: FixtureBucket, fake_openai: FakeOpenAIServer
) -> None:
    _fill(moto_bucket)
    result = invoke(_args(moto_bucket, fake_openai, "--parallel-categories"))
    assert result.exit_code == 0, result.stderr
    summary = result.summary()
    assert summary["images"] == 15
    assert sorted(summary["properties"]) == ["0012", "77"]
    assert [s["reason"] for s in summary["skipped_images"]] == ["not inside a category folder"]
    assert sorted(r.image_count for r in fake_openai.requests if r.image_count) == [1, 2, 2, 10]
    assert len(set(fake_openai.successful_image_hashes())) == 15
    assert invoke(["validate", "output"]).exit_code == 0
    assert sorted(moto_bucket.keys()) == sorted(moto_bucket.keys("incoming/"))


def test_s3_output_writes_the_same_tree_to_the_bucket(
    workdir: Path, moto_bucket: FixtureBucket, fake_openai: FakeOpenAIServer
) -> None:
    _fill(moto_bucket)
    result = invoke(_args(moto_bucket, fake_openai, "--output-dir", f"s3://{moto_bucket.name}/results"))
    assert result.exit_code == 0, result.stderr
    keys = moto_bucket.keys("results/")
    run_id = result.summary()["run_id"]
    assert f"results/_runs/{run_id}.json" in keys
    assert json.loads(moto_bucket.get(f"results/_runs/{run_id}.json"))["images"] == 15
    property_keys = [k for k in keys if k.startswith("results/0012/")]
    assert sum(1 for k in property_keys if k.endswith(".jpg")) == 14
    assert not (workdir / "output").exists()


def test_missing_bucket_is_one_line_exit_2_and_no_request(
    workdir: Path, moto_bucket: FixtureBucket, fake_openai: FakeOpenAIServer
) -> None:
    args = _args(moto_bucket, fake_openai)
    args[args.index("photos")] = "no-such-bucket"
    result = invoke(args)
    assert result.exit_code == 2
    assert "no-such-bucket" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert fake_openai.requests == []


def test_identical_objects_are_found_by_etag_and_sent_once(
    workdir: Path, moto_bucket: FixtureBucket, fake_openai: FakeOpenAIServer
) -> None:
    photo = jpeg_bytes(7)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        moto_bucket.put(f"incoming/0012/kitchen/{name}", photo)
    moto_bucket.put("incoming/0012/kitchen/d.jpg", jpeg_bytes(8))
    result = invoke(_args(moto_bucket, fake_openai))
    assert result.exit_code == 0, result.stderr
    (request,) = fake_openai.requests
    assert request.image_count == 2
    assert result.summary()["duplicate_images"] == 2
    assert len(list((workdir / "output" / "0012").glob("file_*.json"))) == 4
