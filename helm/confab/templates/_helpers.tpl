{{- define "confab.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "confab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "confab.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "confab.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "confab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "confab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* confab's own pods (the optional llama.cpp pods are component "llm"). */}}
{{- define "confab.serverSelectorLabels" -}}
{{ include "confab.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "confab.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "confab.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "confab.embedded" -}}
{{- if eq .Values.vectorStore.mode "embedded" }}true{{ end -}}
{{- end -}}

{{/* More than one pod serves requests. */}}
{{- define "confab.multiReplica" -}}
{{- if and (not (include "confab.embedded" .)) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}true{{ end -}}
{{- end -}}

{{/* Cluster mode: shared state in Redis. */}}
{{- define "confab.cluster" -}}
{{- if or .Values.cluster.redis.url .Values.cluster.redis.existingSecret }}true{{ end -}}
{{- end -}}

{{/* Refuse value combinations that would install something broken. */}}
{{- define "confab.validate" -}}
{{- if include "confab.embedded" . -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail "vectorStore.mode=embedded runs one pod (the store lives on its volume): set replicaCount=1 or use vectorStore.mode=remote" -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail "autoscaling needs vectorStore.mode=remote (the embedded store cannot be shared between pods)" -}}
{{- end -}}
{{- else if not .Values.vectorStore.remote.url -}}
{{- fail "vectorStore.mode=remote needs vectorStore.remote.url" -}}
{{- end -}}
{{- if and (include "confab.multiReplica" .) (not (include "confab.cluster" .)) -}}
{{- fail "replicaCount > 1 (or autoscaling) needs cluster mode: set cluster.redis.url or cluster.redis.existingSecret (without Redis each pod would hold its own rooms, limits and documents)" -}}
{{- end -}}
{{- if and .Values.cluster.redis.url .Values.cluster.redis.existingSecret -}}
{{- fail "cluster.redis: set url or existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.localLlm.enabled (not .Values.localLlm.model.existingClaim) -}}
{{- fail "localLlm.enabled needs localLlm.model.existingClaim: a PVC holding the GGUF model" -}}
{{- end -}}
{{- $grace := div (int (default 15000 (.Values.config.server).shutdown_grace_ms)) 1000 -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $grace 15 (int .Values.preStopSleepSeconds)) -}}
{{- fail (printf "terminationGracePeriodSeconds must exceed preStopSleepSeconds + shutdown_grace_ms/1000 + 15 (= %d)" (add $grace 15 (int .Values.preStopSleepSeconds))) -}}
{{- end -}}
{{- $tenants := merge (dict) (default dict .Values.auth.tenants) (default dict (.Values.config.auth).tenants) -}}
{{- if and (not .Values.auth.devMode) (not $tenants) -}}
{{- fail "auth needs tenants: set auth.tenants.NAME.keysSecret (a Secret of `USER sha256:HEX` lines, from `confab key new`), or auth.devMode=true to try the chart without keys" -}}
{{- end -}}
{{- if and .Values.auth.devMode $tenants -}}
{{- fail "auth.devMode serves one keyless tenant: remove auth.tenants or turn devMode off" -}}
{{- end -}}
{{- range $name, $t := .Values.auth.tenants -}}
{{- if not $t.keysSecret -}}
{{- fail (printf "auth.tenants.%s needs keysSecret" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* confab's configuration: the user's `config` plus the keys the chart owns. JSON, because
     Helm's toToml writes every number as a float. */}}
{{- define "confab.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $server := deepCopy (default dict $cfg.server) -}}
{{- $_ := set $server "bind" (printf "0.0.0.0:%v" .Values.service.port) -}}
{{- $_ := set $cfg "server" $server -}}
{{- $vector := deepCopy (default dict $cfg.vector) -}}
{{- $_ := set $vector "data_dir" "/var/lib/confab" -}}
{{- if include "confab.embedded" . -}}
{{- $_ := set $vector "backend" "edge" -}}
{{- else -}}
{{- $_ := set $vector "backend" "remote" -}}
{{- $_ := set $vector "url" .Values.vectorStore.remote.url -}}
{{- $_ := set $vector "collection" .Values.vectorStore.remote.collection -}}
{{- end -}}
{{- $_ := set $cfg "vector" $vector -}}
{{- $providers := deepCopy (default dict $cfg.providers) -}}
{{- range $name, $_ := .Values.providerKeys -}}
{{- $p := deepCopy (default dict (get $providers $name)) -}}
{{- $_ := set $p "api_key_file" (printf "/etc/confab/keys/%s/key" $name) -}}
{{- $_ := set $providers $name $p -}}
{{- end -}}
{{- if .Values.localLlm.enabled -}}
{{- $_ := set $providers "local" (dict "kind" "openai" "base_url" (printf "http://%s-llm:%v/v1" (include "confab.fullname" .) .Values.localLlm.port) "model" "local-llm" "max_tokens" .Values.localLlm.maxTokens "first_token_timeout_ms" 30000) -}}
{{- $chains := deepCopy (default dict $cfg.chains) -}}
{{- $default := deepCopy (default dict (get $chains "default")) -}}
{{- $links := default list $default.links -}}
{{- if not (has "local" $links) -}}
{{- $links = append (without $links "extractive") "local" -}}
{{- end -}}
{{- $_ := set $default "links" $links -}}
{{- $_ := set $chains "default" $default -}}
{{- $_ := set $cfg "chains" $chains -}}
{{- end -}}
{{- if $providers -}}
{{- $_ := set $cfg "providers" $providers -}}
{{- end -}}
{{- $auth := deepCopy (default dict $cfg.auth) -}}
{{- $_ := set $auth "dev_mode" .Values.auth.devMode -}}
{{- if .Values.auth.allowedOrigins -}}
{{- $_ := set $auth "allowed_origins" .Values.auth.allowedOrigins -}}
{{- end -}}
{{- $tenants := deepCopy (default dict $auth.tenants) -}}
{{- range $name, $_ := .Values.auth.tenants -}}
{{- $t := deepCopy (default dict (get $tenants $name)) -}}
{{- $_ := set $t "keys_file" (printf "/etc/confab/tenants/%s/keys" $name) -}}
{{- $_ := set $tenants $name $t -}}
{{- end -}}
{{- if $tenants -}}
{{- $_ := set $auth "tenants" $tenants -}}
{{- end -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- if include "confab.cluster" . -}}
{{- $cluster := deepCopy (default dict $cfg.cluster) -}}
{{- $_ := set $cluster "backend" "redis" -}}
{{- if .Values.cluster.redis.url -}}
{{- $_ := set $cluster "redis_url" .Values.cluster.redis.url -}}
{{- end -}}
{{- $_ := set $cfg "cluster" $cluster -}}
{{- end -}}
{{- if .Values.telemetry.otlpEndpoint -}}
{{- $telemetry := deepCopy (default dict $cfg.telemetry) -}}
{{- $_ := set $telemetry "otlp_endpoint" .Values.telemetry.otlpEndpoint -}}
{{- $_ := set $telemetry "sample_ratio" .Values.telemetry.sampleRatio -}}
{{- $_ := set $cfg "telemetry" $telemetry -}}
{{- end -}}
{{- toPrettyJson $cfg -}}
{{- end -}}
