/* api/page.c — the demo page and the OpenAPI document, embedded at build time from api/static/ with the assembler's
 * .incbin (paths are relative to the repository root, where the Makefile runs the compiler), each followed by a NUL
 * so they are C strings. Edit api/static/index.html and api/static/openapi.json, not this file. */
#include "api/api.h"

__asm__(".section .rodata\n"
        ".global nq_api_page_html\n"
        ".type nq_api_page_html, @object\n"
        ".balign 16\n"
        "nq_api_page_html:\n"
        ".incbin \"api/static/index.html\"\n"
        ".byte 0\n"
        ".size nq_api_page_html, . - nq_api_page_html\n"
        ".global nq_api_openapi_json\n"
        ".type nq_api_openapi_json, @object\n"
        ".balign 16\n"
        "nq_api_openapi_json:\n"
        ".incbin \"api/static/openapi.json\"\n"
        ".byte 0\n"
        ".size nq_api_openapi_json, . - nq_api_openapi_json\n"
        ".previous\n");
