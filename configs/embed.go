// Package configs ships labelpipe's built-in JSON Schemas and sample
// webhook payloads inside the binary, so that the schema stage needs no
// files on disk and previews and benchmarks have realistic input.
package configs

import "embed"

// Schemas holds schemas/<name>.json; the schema stage's built-in names
// (e.g. "issue-exported") are the file names without ".json".
//
//go:embed schemas/*.json
var Schemas embed.FS

// Payloads holds payloads/*.json: sample Aquarium webhook bodies. Files
// named invalid-*.json deliberately break the issue-exported schema.
//
//go:embed payloads/*.json
var Payloads embed.FS

// ConfigSchema is labelpipe.schema.json: the config's JSON Schema,
// generated from the config structs (see internal/configdoc), for editors
// through yaml-language-server. `labelpipe config schema` prints it.
//
//go:embed labelpipe.schema.json
var ConfigSchema []byte
