variable "environment" {
  description = "Environment name, part of every resource name (sciscale-<environment>), e.g. \"dev\" or \"prod\"."
  type        = string
}

variable "region" {
  description = "AWS region, e.g. \"us-east-1\"."
  type        = string
}

variable "availability_zones" {
  description = "Availability zones for the private subnets, e.g. [\"us-east-1a\", \"us-east-1b\"]; pick zones that offer your GPU type."
  type        = list(string)
}

variable "api_allowed_cidrs" {
  description = "CIDRs that may reach the EKS API from the internet (your office or VPN egress). Empty: private endpoint only."
  type        = list(string)
  default     = []
}

variable "gpu_instance_types" {
  description = "GPU instance types of the worker node groups."
  type        = list(string)
  default     = ["g6e.xlarge"]
}

variable "gpu_ondemand_nodes" {
  description = "On-demand GPU node group size (min, max)."
  type        = object({ min = number, max = number })
  default     = { min = 0, max = 4 }
}

variable "gpu_spot_nodes" {
  description = "Spot GPU node group size (min, max)."
  type        = object({ min = number, max = number })
  default     = { min = 0, max = 8 }
}

variable "tags" {
  description = "Extra tags on every resource (cost centre, owner)."
  type        = map(string)
  default     = {}
}
