"""medalign.recipes"""
