output "bucket_name" {
  description = "Name of the cache bucket."
  value       = aws_s3_bucket.cache.bucket
}

output "bucket_arn" {
  description = "ARN of the cache bucket."
  value       = aws_s3_bucket.cache.arn
}

output "policy_arn" {
  description = "ARN of the IAM policy granting the scheduler its cache; attach it to the scheduler's role (or pod identity)."
  value       = aws_iam_policy.scheduler.arn
}

output "object_store_url" {
  description = "Value of the scheduler's --object-store flag."
  value       = var.prefix == "" ? "s3://${aws_s3_bucket.cache.bucket}" : "s3://${aws_s3_bucket.cache.bucket}/${var.prefix}"
}
