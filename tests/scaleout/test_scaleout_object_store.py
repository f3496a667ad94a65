"""The survey store on the S3 server, without workers: credentials from the store resource's config
(no AWS_* environment), tables, and listings that see what other processes committed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from servers import S3_ENV

from aquamvs_assets.resources import ZarrStoreResource
from aquamvs_core.store import SurveyStore

pytestmark = [pytest.mark.scaleout, pytest.mark.xdist_group("scaleout")]  # one worker: shared servers


def test_store_resource_credentials_without_environment(s3, monkeypatch):
    for name in S3_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    resource = ZarrStoreResource(
        root=f"s3://{s3.bucket}/resource.zarr",
        endpoint_url=s3.endpoint_url,
        access_key_id=s3.key,
        secret_access_key=s3.secret,
    )
    points = np.random.default_rng(0).normal(size=(500, 3))
    store = resource.get()
    store.write_product("fused_cloud/f000000", {"points": points}, {"fingerprint": "fp"})
    table = pd.DataFrame({"frame": ["f000000"], "median_mm": [0.146]})
    store.write_table("quality", table)

    again = resource.get()
    np.testing.assert_array_equal(again.read_product("fused_cloud/f000000")["points"], points)
    pd.testing.assert_frame_equal(again.read_table("quality"), table)
    objects = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="resource.zarr/")["Contents"]
    assert any(o["Key"] == "resource.zarr/tables/quality.csv" for o in objects)


def test_a_long_lived_reader_lists_what_another_process_committed(s3):
    url = f"s3://{s3.bucket}/listing.zarr"
    reader = SurveyStore(url, survey="listing")
    reader.write_product("pairwise_depths/f000000/cam0-cam1", {"depth": np.zeros((2, 2))})
    assert reader.product_paths("pairwise_depths/f000000") == ["pairwise_depths/f000000/cam0-cam1"]
    # Another process's writer: a filesystem instance of its own (not fsspec's cached one).
    writer = SurveyStore(url, storage_options={"skip_instance_cache": True})
    writer.write_product("pairwise_depths/f000000/cam1-cam2", {"depth": np.ones((2, 2))})
    assert reader.product_paths("pairwise_depths/f000000") == [
        "pairwise_depths/f000000/cam0-cam1",
        "pairwise_depths/f000000/cam1-cam2",
    ]
    np.testing.assert_array_equal(
        reader.read_product("pairwise_depths/f000000/cam1-cam2")["depth"], np.ones((2, 2))
    )
