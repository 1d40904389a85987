{{/*
A TOML writer. Helm's toToml writes every number of the values as a float
(4 becomes 4.0, which an integer option refuses), so this one writes whole
numbers as integers (a float option takes an integer as well) and the rest
as they are. Strings are written as JSON strings, which are valid TOML basic
strings. A null value leaves its option out (its default applies).
*/}}

{{/* One value: a scalar, an inline array or an inline table. */}}
{{- define "ganglion.toml.value" -}}
{{- $value := . -}}
{{- $kind := kindOf $value -}}
{{- if eq $kind "string" -}}
{{- toJson $value -}}
{{- else if eq $kind "bool" -}}
{{- $value -}}
{{- else if has $kind (list "float32" "float64") -}}
{{- if eq (floor $value) (float64 $value) -}}{{- int64 $value -}}{{- else -}}{{- $value -}}{{- end -}}
{{- else if has $kind (list "int" "int8" "int16" "int32" "int64" "uint" "uint8" "uint16" "uint32" "uint64") -}}
{{- $value -}}
{{- else if eq $kind "slice" -}}
[{{- range $i, $element := $value -}}{{- if $i }}, {{ end -}}{{- include "ganglion.toml.value" $element -}}{{- end -}}]
{{- else if eq $kind "map" -}}
{ {{- $first := true -}}
{{- range $key := keys $value | sortAlpha -}}
{{- $element := get $value $key -}}
{{- if not (kindIs "invalid" $element) -}}
{{- if not $first }}, {{ end -}}{{- $first = false -}}
{{- include "ganglion.toml.key" $key }} = {{ include "ganglion.toml.value" $element -}}
{{- end -}}
{{- end -}} }
{{- else -}}
{{- fail (printf "config: %v (%s) cannot be written as TOML" $value $kind) -}}
{{- end -}}
{{- end -}}

{{/* A key: bare when it can be, quoted otherwise. */}}
{{- define "ganglion.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{- . -}}{{- else -}}{{- toJson . -}}{{- end -}}
{{- end -}}

{{/*
A table and the tables inside it: (dict "table" $map "path" "services.syncapi").
Keys with plain values first, then each sub-table under its own header, as
TOML requires.
*/}}
{{- define "ganglion.toml.table" -}}
{{- $table := .table -}}
{{- $path := .path -}}
{{- $plain := list -}}
{{- $tables := list -}}
{{- range $key := keys $table | sortAlpha -}}
{{- $value := get $table $key -}}
{{- if kindIs "map" $value -}}
{{- $tables = append $tables $key -}}
{{- else if not (kindIs "invalid" $value) -}}
{{- $plain = append $plain $key -}}
{{- end -}}
{{- end -}}
{{- if and $plain $path }}
[{{ $path }}]
{{- end -}}
{{- range $key := $plain }}
{{ include "ganglion.toml.key" $key }} = {{ include "ganglion.toml.value" (get $table $key) }}
{{- end -}}
{{- range $key := $tables -}}
{{- $inner := ternary (include "ganglion.toml.key" $key) (printf "%s.%s" $path (include "ganglion.toml.key" $key)) (eq $path "") -}}
{{- include "ganglion.toml.table" (dict "table" (get $table $key) "path" $inner) -}}
{{- end -}}
{{- end -}}
