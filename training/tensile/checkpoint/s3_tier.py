"""The durable tier on S3: the same layout and contract as DirectoryTier, under `s3://bucket/prefix/`.

An object appears whole or not at all (PutObject; a multipart upload only at its completion), so
a checkpoint's files need no rename; the manifest is still written last, and a commit record is
published by a conditional write (If-None-Match: *) that only one group can win.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tensile.checkpoint.api import (
    BAD_MARK, MANIFEST, PIN, parse_bad_mark, CheckpointError, CommitRecord, EpochClaim, FileEntry, Manifest, RangeReader, check_range, missing_file,
    no_manifest, parse_manifest, partial_beside, short_read, whole_range, wrong_sha256, wrong_size)
from tensile.checkpoint.chunks import FileHasher, hash_bytes
from tensile.checkpoint.commit_log import EPOCHS, CommitLogReader, fenced, record_name
from tensile.checkpoint.ranges import TierRanges
from tensile.s3.objects import MAX_PARTS, S3Objects, S3Settings, error_code, is_missing, is_transient

log = logging.getLogger(__name__)

_FENCED_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
"""412: the key exists; 409: another conditional write to it was in flight at the same time."""
_DELETE_BATCH = 1000
"""DeleteObjects takes at most 1,000 keys."""
_HASH_CHUNK = 4 << 20


class S3CommitLog(CommitLogReader):
    """`commits/<seq>` objects; publishing is PutObject with If-None-Match: *, so exactly one
    writer creates each sequence number and every later one gets 412 Precondition Failed."""

    unreadable_errors = (ClientError, ValueError, TypeError)

    def __init__(self, objects: S3Objects):
        self.objects = objects

    def _key(self, seq: int) -> str:
        return self.objects.key("commits", record_name(seq))

    def sequence_numbers(self) -> list[int]:
        _, records = self.objects.listing("commits")
        return sorted(int(name) for name in records if name.isdigit())

    def read(self, seq: int) -> CommitRecord:
        return CommitRecord.from_json(self.objects.get(self._key(seq)).decode())

    def publish(self, record: CommitRecord) -> None:
        body = record.to_json().encode()

        def transient_or_conflict(error: Exception) -> bool:
            # A 409 says a rival's write to the same key was in flight: retrying settles who won.
            return is_transient(error) or (isinstance(error, ClientError)
                                           and error_code(error) == "ConditionalRequestConflict")
        try:
            self.objects.retrying(
                f"PutObject {self._key(record.seq)} (If-None-Match: *)",
                lambda: self.objects.client.put_object(Bucket=self.objects.bucket, Key=self._key(record.seq),
                                                       Body=body, IfNoneMatch="*"),
                is_transient=transient_or_conflict)
        except ClientError as e:
            if error_code(e) not in _FENCED_CODES:
                raise
            # Our own earlier attempt may have landed with its response lost (a reset, a timeout):
            # the retry then meets our own record, which is a win, not a fence.
            if self._stored(record.seq) == body:
                log.info("commit %d: found our own record from an earlier attempt", record.seq)
                return
            winner = self.describe(record.seq)
            if error_code(e) == "ConditionalRequestConflict":
                winner += f"; S3 still reported a conflicting write after {self.objects.settings.retry.attempts} tries"
            raise fenced(record, winner) from e

    def _stored(self, seq: int) -> bytes | None:
        try:
            return self.objects.get(self._key(seq))
        except ClientError:
            return None

    def claim_epoch(self, claim: EpochClaim) -> bool:
        """PutObject `epochs/<epoch>` with If-None-Match: *; False if another group holds it."""
        key, body = self.objects.key(EPOCHS, record_name(claim.epoch)), claim.to_json().encode()
        try:
            self.objects.retrying(f"PutObject {key} (If-None-Match: *)", lambda: self.objects.client.put_object(
                Bucket=self.objects.bucket, Key=key, Body=body, IfNoneMatch="*"))
        except ClientError as e:
            if error_code(e) not in _FENCED_CODES:
                raise
            try:
                return self.objects.get(key) == body  # our own lost-reply write
            except ClientError:
                return False
        return True

    def epoch_claims(self, newer_than: int = 0) -> list[EpochClaim]:
        _, names = self.objects.listing(EPOCHS)
        claims = []
        for name in sorted(n for n in names if n.isdigit() and int(n) > newer_than):
            try:
                claims.append(EpochClaim.from_json(self.objects.get(self.objects.key(EPOCHS, name)).decode()))
            except (ClientError, ValueError, TypeError):
                continue
        return claims


class S3Tier:
    """Checkpoints under `<prefix>/checkpoints/<id>/`, the commit log under `<prefix>/commits/`,
    the rollback pin at `<prefix>/pins/resume.json`: the same layout as a DirectoryTier's root."""

    def __init__(self, url: str, endpoint_url: str | None = None, settings: S3Settings | None = None):
        self.objects = S3Objects(url, endpoint_url=endpoint_url, settings=settings)
        self.url = self.objects.url
        self.settings = self.objects.settings
        self.commit_log = S3CommitLog(self.objects)

    def _key(self, checkpoint_id: str, rel_path: str = "") -> str:
        return self.objects.key("checkpoints", checkpoint_id, rel_path)

    # ---- writing ------------------------------------------------------------------------------
    def put_file(self, checkpoint_id: str, rel_path: str, source: Path) -> FileEntry:
        """Upload a local file, hashing as it is read; the object is visible only once complete."""
        key = self._key(checkpoint_id, rel_path)
        if Path(source).stat().st_size < self.settings.multipart_threshold_bytes:
            data = Path(source).read_bytes()
            self.objects.put(key, data)
            return hash_bytes(rel_path, data)
        return self._put_multipart(key, rel_path, Path(source))

    def _put_multipart(self, key: str, rel_path: str, source: Path) -> FileEntry:
        client, bucket = self.objects.client, self.objects.bucket
        part_size = max(self.settings.part_size_bytes, -(-source.stat().st_size // MAX_PARTS))
        upload_id = self.objects.retrying(
            f"CreateMultipartUpload {key}",
            lambda: client.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]

        def upload_part(number: int, chunk: bytes) -> dict:
            response = self.objects.retrying(
                f"UploadPart {key} part {number}",
                lambda: client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                           Body=chunk))
            return {"PartNumber": number, "ETag": response["ETag"]}

        hasher, parts = FileHasher(), []
        try:
            # Parts upload in parallel while the file is read (and hashed) in order; at most
            # max_concurrency parts wait in memory.
            with open(source, "rb") as f, ThreadPoolExecutor(self.settings.max_concurrency) as pool:
                in_flight = deque()
                while chunk := f.read(part_size):
                    hasher.update(chunk)
                    in_flight.append(pool.submit(upload_part, len(parts) + len(in_flight) + 1, chunk))
                    if len(in_flight) >= self.settings.max_concurrency:
                        parts.append(in_flight.popleft().result())
                parts += [future.result() for future in in_flight]
            self.objects.retrying(
                f"CompleteMultipartUpload {key}",
                lambda: client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts}))
        except BaseException:
            self._abort_upload(key, upload_id)
            raise
        return hasher.entry(rel_path)

    def _abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self.objects.client.abort_multipart_upload(Bucket=self.objects.bucket, Key=key, UploadId=upload_id)
        except Exception as e:  # best effort while another error propagates; the bucket's
            # lifecycle rule (AbortIncompleteMultipartUpload) removes what is left
            log.warning("could not abort multipart upload %s of %s: %s", upload_id, key, e)

    def write_manifest(self, manifest: Manifest) -> None:
        """Written last: a checkpoint without a manifest is never loaded."""
        self.objects.put(self._key(manifest.checkpoint_id, MANIFEST), manifest.to_json().encode())

    # ---- reading ------------------------------------------------------------------------------
    def read_manifest(self, checkpoint_id: str) -> Manifest:
        try:
            text = self.objects.get(self._key(checkpoint_id, MANIFEST))
        except ClientError as e:
            if is_missing(e):
                raise no_manifest(checkpoint_id) from e
            raise
        return parse_manifest(checkpoint_id, text)

    def verify(self, manifest: Manifest, *, contents: bool = True) -> None:
        """Check every file's size and (with `contents`) sha256, streaming; CheckpointCorrupt names
        the first mismatch."""
        for entry in manifest.files:
            key = self._key(manifest.checkpoint_id, entry.path)

            def size_only() -> tuple[int, str | None]:
                return self.objects.client.head_object(Bucket=self.objects.bucket, Key=key)["ContentLength"], None

            def size_and_sha256() -> tuple[int, str | None]:
                response = self.objects.client.get_object(Bucket=self.objects.bucket, Key=key)
                body = response["Body"]
                if response["ContentLength"] != entry.size:  # no need to read it all
                    body.close()
                    return response["ContentLength"], None
                digest = hashlib.sha256()
                for chunk in body.iter_chunks(_HASH_CHUNK):
                    digest.update(chunk)
                return response["ContentLength"], digest.hexdigest()
            try:
                size, sha256 = (self.objects.retrying(f"GetObject {key} (verify)", size_and_sha256) if contents
                                else self.objects.retrying(f"HeadObject {key}", size_only))
            except ClientError as e:
                if is_missing(e):
                    raise missing_file(manifest.checkpoint_id, entry.path) from e
                raise
            if size != entry.size:
                raise wrong_size(manifest.checkpoint_id, entry, size)
            if contents and sha256 != entry.sha256:
                raise wrong_sha256(manifest.checkpoint_id, entry)

    def read_range(self, checkpoint_id: str, rel_path: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset` (one ranged GET); CheckpointCorrupt if the object
        is missing or shorter."""
        check_range(checkpoint_id, rel_path, offset, length)
        if length == 0:
            return b""  # a Range header cannot ask for nothing
        try:
            data = self.objects.get(self._key(checkpoint_id, rel_path), f"bytes={offset}-{offset + length - 1}")
        except ClientError as e:
            if is_missing(e):
                raise missing_file(checkpoint_id, rel_path) from e
            if error_code(e) == "InvalidRange":  # the range starts past the end
                raise short_read(checkpoint_id, rel_path, offset, length, 0) from e
            raise
        return whole_range(checkpoint_id, rel_path, offset, length, data)

    def fetch_file(self, checkpoint_id: str, rel_path: str, target: Path) -> None:
        """Download to a local path (ranged GETs in parallel); the target never holds a partial copy."""
        partial = partial_beside(Path(target))
        key = self._key(checkpoint_id, rel_path)
        transfer = TransferConfig(multipart_threshold=self.settings.multipart_threshold_bytes,
                                  multipart_chunksize=self.settings.part_size_bytes,
                                  max_concurrency=self.settings.max_concurrency)
        try:
            self.objects.retrying(f"download {key}", lambda: self.objects.client.download_file(
                self.objects.bucket, key, str(partial), Config=transfer))
        except ClientError as e:
            partial.unlink(missing_ok=True)
            if is_missing(e):
                raise missing_file(checkpoint_id, rel_path) from e
            raise
        os.replace(partial, Path(target))

    def shared_directory(self, checkpoint_id: str) -> Path | None:
        return None  # objects, not files

    def local_view(self, manifest: Manifest, scratch: Path) -> Path:
        """Every file of the checkpoint downloaded under `scratch/<checkpoint id>`."""
        target = Path(scratch) / manifest.checkpoint_id
        for entry in manifest.files:
            (target / entry.path).parent.mkdir(parents=True, exist_ok=True)
            self.fetch_file(manifest.checkpoint_id, entry.path, target / entry.path)
        return target

    def range_reader(self, manifest: Manifest, local_copies: list[Path] | None = None) -> RangeReader:
        return TierRanges(self, manifest.checkpoint_id, {e.path: e.size for e in manifest.files}, local_copies or [])

    def list_checkpoint_ids(self) -> list[str]:
        """Every checkpoint with any object, manifest or not (prune judges orphans by it)."""
        folders, _ = self.objects.listing("checkpoints")
        return sorted(name for name in folders if name)

    # ---- deleting -----------------------------------------------------------------------------
    def delete_checkpoint(self, checkpoint_id: str) -> None:
        """Delete its objects and abort its unfinished uploads (a save killed mid-file)."""
        folder = self._key(checkpoint_id) + "/"
        client, bucket = self.objects.client, self.objects.bucket
        keys = self.objects.retrying(f"ListObjectsV2 {folder}", lambda: list(self.objects.keys_under(folder)))
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start:start + _DELETE_BATCH]]
            response = self.objects.retrying(f"DeleteObjects {folder}", lambda: client.delete_objects(
                Bucket=bucket, Delete={"Objects": batch, "Quiet": True}))
            if response.get("Errors"):
                first = response["Errors"][0]
                raise CheckpointError(f"{checkpoint_id}: could not delete {len(response['Errors'])} objects, "
                                      f"first {first.get('Key')}: {first.get('Code')} {first.get('Message')}")
        try:
            uploads = self.objects.retrying(f"ListMultipartUploads {folder}", lambda: client.list_multipart_uploads(
                Bucket=bucket, Prefix=folder).get("Uploads", []))
        except ClientError as e:
            if error_code(e) != "AccessDenied":
                raise
            # The team's role may not hold s3:ListBucketMultipartUploads; the bucket's lifecycle
            # rule aborts unfinished uploads after a few days anyway.
            log.warning("%s: cannot list unfinished uploads to abort them (%s); the bucket's lifecycle rule "
                        "will", checkpoint_id, e)
            uploads = []
        for upload in uploads:
            self._abort_upload(upload["Key"], upload["UploadId"])

    # ---- bad marks ----------------------------------------------------------------------------
    def mark_bad(self, checkpoint_id: str, record: dict) -> None:
        self.objects.put(self._key(checkpoint_id, BAD_MARK), json.dumps(record).encode())

    def bad_mark(self, checkpoint_id: str) -> dict | None:
        try:
            text = self.objects.get(self._key(checkpoint_id, BAD_MARK))
        except ClientError as e:
            if is_missing(e):
                return None
            raise
        return parse_bad_mark(text)

    # ---- the rollback pin ---------------------------------------------------------------------
    def read_pin(self) -> dict | None:
        """The rollback pin, or None when there is none (an unreadable pin counts as none)."""
        try:
            data = json.loads(self.objects.get(self.objects.key(PIN)))
        except ClientError as e:
            if is_missing(e):
                return None
            raise
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def write_pin(self, data: dict) -> None:
        self.objects.put(self.objects.key(PIN), json.dumps(data).encode())
