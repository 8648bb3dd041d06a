output "url" {
  description = "Tracking endpoint through the load balancer (point your tracking domain at it)."
  value       = var.certificate_arn == null ? "http://${aws_lb.trackpoint.dns_name}" : "https://${aws_lb.trackpoint.dns_name}"
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer, for a CNAME or a Route 53 alias record."
  value       = aws_lb.trackpoint.dns_name
}

output "load_balancer_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias record."
  value       = aws_lb.trackpoint.zone_id
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.trackpoint.name
}

output "service_name" {
  description = "The ECS service."
  value       = aws_ecs_service.trackpoint.name
}

output "log_group_name" {
  description = "CloudWatch log group of the tracker's own logs."
  value       = aws_cloudwatch_log_group.trackpoint.name
}
