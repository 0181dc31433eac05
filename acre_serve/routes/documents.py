"""Documents: ingest (JSON or a multipart upload), list, show, delete; the ingests running now."""
from __future__ import annotations

import json

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import bad_request, invalid_fields
from ..schemas import DocumentIn
from . import worker_of

router = APIRouter()


async def _document_in(request: Request) -> DocumentIn:
    """The body as a DocumentIn: JSON {text, name?, collection?}, or multipart with a `file` (or `text`),
    `name` and `collection`."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is not None and not isinstance(upload, str):
            raw = await upload.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise bad_request("file", f"not UTF-8 text (byte {e.start})") from None
            fields = {"text": text, "name": form.get("name") or upload.filename or ""}
            if form.get("collection"):
                fields["collection"] = form.get("collection")
        else:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
    else:
        try:
            fields = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request("body", f"malformed JSON ({e})") from None
    try:
        return DocumentIn.model_validate(fields)
    except ValidationError as e:
        raise invalid_fields(e.errors()) from None


@router.post("/v1/documents")
async def ingest(request: Request) -> dict:
    """DocInfo of the document; re-ingesting the same text is a no-op (`existed: true`)."""
    doc = await _document_in(request)
    # in a thread: the prefill releases the GIL in torch, so this process keeps answering meanwhile
    return await run_in_threadpool(worker_of(request).ingest, doc.text, doc.name, doc.collection)


@router.get("/v1/ingests")
async def ingests(request: Request) -> dict:
    return {"ingests": worker_of(request).ingests.running()}


@router.get("/v1/documents")
async def documents(request: Request) -> dict:
    return {"documents": await run_in_threadpool(worker_of(request).documents)}


@router.get("/v1/documents/{ref}")
async def document(ref: str, request: Request) -> dict:
    return await run_in_threadpool(worker_of(request).document, ref)


@router.delete("/v1/documents/{ref}")
async def delete(ref: str, request: Request) -> dict:
    return {"deleted": await run_in_threadpool(worker_of(request).delete, ref)}
