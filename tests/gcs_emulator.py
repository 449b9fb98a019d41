"""gcp-storage-emulator with GCS's generation preconditions, which the emulator ignores: run it as the emulator's own
command line (`python tests/gcs_emulator.py -d DIR start --host … --port …`).

GCS answers a request carrying `ifGenerationMatch=G` (or `ifMetagenerationMatch=M`) with 412 conditionNotMet unless
the object's generation is G (0: no live object) and its metageneration M (bumped by each metadata update),
https://cloud.google.com/storage/docs/request-preconditions. nfp's hold on a gs:// output dir
rests on that (create-only, compare-and-delete, compare-and-renew), so the tests need a server that keeps it.
Here it is kept for uploads (the object's name in the query, the path or the upload's metadata), DELETE and PATCH.
The emulator serves one request at a time, so check-then-act is atomic as on GCS.
"""

from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _object_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    if request.params.get("object_id"):
        return request.params["object_id"]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") or {}).get("name") or data.get("name")
    return None


def _generations(storage, bucket: str, name: str | None) -> tuple[str, str | None]:
    """(generation, metageneration) of the live object; ("0", None) when there is none."""
    try:
        found = storage.get_file_obj(bucket, name)
    except NotFound:
        return "0", None
    return str(found["generation"]), str(found["metageneration"])


def _with_preconditions(handler, *, on_an_object: bool):
    """on_an_object: DELETE and PATCH, which answer 404 for a missing object before any precondition, as GCS does."""

    def checked(request, response, storage, *args, **kwargs):
        generation, metageneration = _generations(storage, request.params["bucket_name"], _object_name(request))
        missing = on_an_object and generation == "0"
        unmet = [
            key
            for key, current in (("ifGenerationMatch", generation), ("ifMetagenerationMatch", metageneration))
            if key in request.query and request.query[key][0] != current
        ]
        if unmet and not missing:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json(
                {
                    "error": {
                        "code": 412,
                        "message": "At least one of the pre-conditions you specified did not hold.",
                        "errors": [{"reason": "conditionNotMet"}],
                    }
                }
            )
            return None
        return handler(request, response, storage, *args, **kwargs)

    return checked


def _install() -> None:
    checked = {
        objects.insert: _with_preconditions(objects.insert, on_an_object=False),
        objects.delete: _with_preconditions(objects.delete, on_an_object=True),
        objects.patch: _with_preconditions(objects.patch, on_an_object=True),
    }
    for _, handlers in server.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn in checked:
                handlers[method] = checked[fn]
    objects.insert = checked[objects.insert]  # the server's fallback for uploads posted without /upload


if __name__ == "__main__":
    _install()
    main()
