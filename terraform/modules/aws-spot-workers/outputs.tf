output "autoscaling_group_name" {
  description = "Name of the workers' Auto Scaling group."
  value       = aws_autoscaling_group.workers.name
}

output "autoscaling_group_arn" {
  description = "ARN of the workers' Auto Scaling group."
  value       = aws_autoscaling_group.workers.arn
}

output "launch_template_id" {
  description = "ID of the workers' launch template."
  value       = aws_launch_template.workers.id
}

output "lifecycle_hook_name" {
  description = "Name of the termination lifecycle hook the workers complete after draining."
  value       = local.lifecycle_hook_name
}

output "iam_role_name" {
  description = "Name of the workers' instance role, for attaching further policies."
  value       = aws_iam_role.workers.name
}

output "iam_role_arn" {
  description = "ARN of the workers' instance role."
  value       = aws_iam_role.workers.arn
}
