variable "project_id" {
  description = "Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Cloud Run region, e.g. europe-west1."
  type        = string
}

variable "name" {
  description = "Name of the Cloud Run service, its service account and its configuration secret."
  type        = string
  default     = "trackpoint"
}

variable "image" {
  description = "The trackpoint image built from the repository's Dockerfile, in Artifact Registry, e.g. europe-west1-docker.pkg.dev/my-project/trackpoint/trackpoint:0.1.0."
  type        = string
}

variable "config_yaml" {
  description = "The trackpoint configuration file's text, e.g. file(\"trackpoint.yaml\"). It must set admin.host to 0.0.0.0 (the probes ask the admin port), admin.token_env to TRACKPOINT_ADMIN_TOKEN, server.drain_timeout_s to 5 or less (Cloud Run kills an instance 10 s after SIGTERM) and name the signing key's variable, TRACKPOINT_SIGNING_KEY, in signing.keys."
  type        = string
}

variable "signing_key_secret_id" {
  description = "Secret Manager secret (in this project) holding the URL signing key (at least 16 bytes), given to every instance as TRACKPOINT_SIGNING_KEY."
  type        = string
}

variable "admin_token_secret_id" {
  description = "Secret Manager secret (in this project) holding the admin port's bearer token (at least 16 bytes), given to every instance as TRACKPOINT_ADMIN_TOKEN, which config_yaml must name in admin.token_env."
  type        = string
}

variable "workers" {
  description = "Worker processes per instance (`trackpoint run --workers`), one per vCPU: the instance gets workers vCPUs."
  type        = number
  default     = 2

  validation {
    condition     = contains([1, 2, 4, 8], var.workers)
    error_message = "workers must be 1, 2, 4 or 8 (Cloud Run CPU sizes)."
  }
}

variable "memory" {
  description = "Memory of an instance in Mi or Gi, e.g. 2Gi: 128Mi-4Gi for 1 vCPU, 128Mi-8Gi for 2, 2Gi-16Gi for 4, 4Gi-32Gi for 8. Cloud Run's filesystem is memory too: the data directory (spool, log files not yet shipped) counts against it."
  type        = string
  default     = "2Gi"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?(Mi|Gi)$", var.memory))
    error_message = "memory must be a quantity in Mi or Gi, e.g. 512Mi or 2Gi."
  }
}

variable "min_instances" {
  description = "Instances kept running even without traffic (a cold start costs the first requests their latency)."
  type        = number
  default     = 1
}

variable "max_instances" {
  description = "Most instances Cloud Run starts."
  type        = number
  default     = 20
}

variable "max_concurrency" {
  description = "Requests one instance takes at once; the edge is asynchronous, so Cloud Run's maximum suits it."
  type        = number
  default     = 1000
}

variable "allow_unauthenticated" {
  description = "Let anyone call the service (tracking pixels, clicks and notices come from browsers and exchanges)."
  type        = bool
  default     = true
}
