variable "bucket_name" {
  description = "Name of the S3 bucket that holds the scheduler's cache (globally unique)."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the cache inside the bucket, the PREFIX of the scheduler's --object-store=s3://BUCKET/PREFIX (empty: the whole bucket)."
  type        = string
  default     = "buildfleet"
}

variable "expiration_days" {
  description = "Days after which an object nobody used is deleted by the lifecycle rule. The scheduler refreshes objects it uses once they are --object-store-refresh-age old (7 days by default), so keep this well above that: a blob then survives as long as some build uses it at least every expiration_days - 7 days."
  type        = number
  default     = 30
  validation {
    condition     = var.expiration_days >= 8
    error_message = "expiration_days must exceed the scheduler's refresh age (7 days by default)."
  }
}

variable "scheduler_role_name" {
  description = "Name of the scheduler's IAM role to attach the bucket policy to (empty: attach nothing; use the policy_arn output)."
  type        = string
  default     = ""
}

variable "scope_list_bucket_to_prefix" {
  description = "Limit the scheduler's s3:ListBucket to keys under PREFIX/ with an s3:prefix condition (off: ListBucket on the whole bucket, which this module creates for the cache alone). ListBucket is what makes S3 answer 404 rather than 403 for a missing key, and a GetObject or HeadObject carries no s3:prefix: if the scheduler then stops at start-up with PermissionDenied on its probe key, turn this off again."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags of the bucket and the policy."
  type        = map(string)
  default     = {}
}
