variable "name" {
  description = "Name of the cluster, service, load balancer and every other resource (and prefix of their names)."
  type        = string
  default     = "trackpoint"
}

variable "region" {
  description = "AWS region to deploy into, e.g. eu-west-1."
  type        = string
}

variable "vpc_id" {
  description = "VPC the load balancer and the tasks run in."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets (two or more zones) of the internet-facing Application Load Balancer."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Private subnets of the Fargate tasks; they reach the image registry, Secrets Manager and the queues through a NAT gateway or VPC endpoints."
  type        = list(string)
}

variable "image" {
  description = "The trackpoint image built from the repository's Dockerfile, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/trackpoint:0.1.0."
  type        = string
}

variable "config_yaml" {
  description = "The trackpoint configuration file's text, e.g. file(\"trackpoint.yaml\"). It must set admin.host to 0.0.0.0 (the load balancer checks /startupz on the admin port), admin.token_env to TRACKPOINT_ADMIN_TOKEN and name the signing key's variable, TRACKPOINT_SIGNING_KEY, in signing.keys."
  type        = string
}

variable "signing_key_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the URL signing key (at least 16 bytes), given to every task as TRACKPOINT_SIGNING_KEY."
  type        = string
}

variable "admin_token_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the admin port's bearer token (at least 16 bytes), given to every task as TRACKPOINT_ADMIN_TOKEN; config_yaml must set admin.token_env to that name."
  type        = string
}

variable "workers" {
  description = "Worker processes per task (`trackpoint run --workers`), one per vCPU: the task gets workers x 1 vCPU."
  type        = number
  default     = 2

  validation {
    condition     = contains([1, 2, 4, 8, 16], var.workers)
    error_message = "workers must be 1, 2, 4, 8 or 16: Fargate tasks have 1, 2, 4, 8 or 16 vCPUs."
  }
}

variable "memory_mib" {
  description = "Memory of a task in MiB (a worker holds < 80 MB, the supervisor ~50 MB). Fargate takes 2048-8192 for 1 vCPU, 4096-16384 for 2, 8192-30720 for 4 (steps of 1024), 16384-61440 for 8 (steps of 4096), 32768-122880 for 16 (steps of 8192)."
  type        = number
  default     = 4096
}

variable "min_tasks" {
  description = "Fewest tasks the autoscaler keeps (two or more: one per zone survives a zone outage)."
  type        = number
  default     = 2
}

variable "max_tasks" {
  description = "Most tasks the autoscaler starts."
  type        = number
  default     = 10
}

variable "cpu_target_percent" {
  description = "Average CPU utilisation of the service the autoscaler aims at."
  type        = number
  default     = 60
}

variable "certificate_arn" {
  description = "ACM certificate of the tracking domain for an HTTPS listener on 443; null: plain HTTP on 80 only."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "How long CloudWatch keeps the tracker's own logs (not the events: those go to the collectors)."
  type        = number
  default     = 30
}
