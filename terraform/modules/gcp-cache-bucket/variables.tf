variable "bucket_name" {
  description = "Name of the GCS bucket that holds the scheduler's cache (globally unique)."
  type        = string
}

variable "location" {
  description = "Location of the bucket: a region close to the scheduler (e.g. europe-west1), or a multi-region."
  type        = string
}

variable "prefix" {
  description = "Key prefix of the cache inside the bucket, the PREFIX of the scheduler's --object-store=gs://BUCKET/PREFIX (empty: the whole bucket)."
  type        = string
  default     = "buildfleet"
}

variable "expiration_days" {
  description = "Days since an object's custom time after which the lifecycle rule deletes it. The scheduler sets the custom time when it writes an object and moves it forward when it uses one older than --object-store-refresh-age (7 days by default); keep this well above that."
  type        = number
  default     = 30
  validation {
    condition     = var.expiration_days >= 8
    error_message = "expiration_days must exceed the scheduler's refresh age (7 days by default)."
  }
}

variable "scheduler_service_account" {
  description = "E-mail of the scheduler's service account, granted roles/storage.objectUser on this bucket only (empty: grant nothing)."
  type        = string
  default     = ""
}

variable "labels" {
  description = "Labels of the bucket."
  type        = map(string)
  default     = {}
}
