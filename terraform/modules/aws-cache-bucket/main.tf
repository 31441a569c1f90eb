# An S3 bucket for the scheduler's cache (--object-store=s3://BUCKET/PREFIX): private,
# encrypted, with the lifecycle rule that expires objects nobody uses, and an IAM policy that
# lets the scheduler use the cache's keys and nothing else.

locals {
  key_prefix = var.prefix == "" ? "" : "${var.prefix}/"
}

resource "aws_s3_bucket" "cache" {
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "cache" {
  bucket                  = aws_s3_bucket.cache.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "cache" {
  bucket = aws_s3_bucket.cache.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "cache" {
  bucket = aws_s3_bucket.cache.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Objects expire expiration_days after their last modification. The scheduler copies an object
# onto itself (which resets that time) when it uses it and it is older than its refresh age, so
# only objects no build has used for a while expire. Interrupted multipart uploads are cleaned.
#
# The bucket must not have versioning enabled (this module leaves it off): in a versioned
# bucket, expiration only hides an object behind a delete marker, and every refresh (a copy
# onto itself) and every replaced action-cache entry keeps its old version. Should versioning
# be turned on anyway (an organisation policy), noncurrent versions are deleted after a day.
resource "aws_s3_bucket_lifecycle_configuration" "cache" {
  bucket = aws_s3_bucket.cache.id
  rule {
    id     = "expire-unused-cache-objects"
    status = "Enabled"
    filter {
      prefix = local.key_prefix
    }
    expiration {
      days = var.expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "scheduler" {
  # Read, write-once puts (If-None-Match), copies in place, multipart uploads, and deleting
  # objects found corrupt: on the cache's keys only.
  statement {
    sid = "CacheObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.cache.arn}/${local.key_prefix}*"]
  }
  # Without ListBucket, S3 answers 403 instead of 404 for a missing key, and the scheduler
  # could not tell a cache miss from a refusal. With scope_list_bucket_to_prefix, listings are
  # limited to PREFIX/ by an s3:prefix condition (see the variable before turning it on).
  statement {
    sid       = "CacheBucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.cache.arn]
    dynamic "condition" {
      for_each = var.scope_list_bucket_to_prefix && var.prefix != "" ? [local.key_prefix] : []
      content {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${condition.value}*"]
      }
    }
  }
}

resource "aws_iam_policy" "scheduler" {
  name        = "${var.bucket_name}-scheduler"
  description = "buildfleet scheduler access to its cache in s3://${var.bucket_name}/${var.prefix}"
  policy      = data.aws_iam_policy_document.scheduler.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "scheduler" {
  count      = var.scheduler_role_name == "" ? 0 : 1
  role       = var.scheduler_role_name
  policy_arn = aws_iam_policy.scheduler.arn
}
