"""medalign.losses"""
